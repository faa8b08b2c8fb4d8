// Package server is the chat-session server of the SSE example: sessions
// with an agent, each an eventlog stream, served as Server-Sent Events with
// Last-Event-ID resume, a gap cap instead of replay storms, idempotent sends,
// and an agent whose crashes never take the server down.
//
// It lives in its own package, with main.go a thin wrapper, so tests and
// benchmarks can start real servers in-process on 127.0.0.1:0.
//
// # Endpoints
//
//	POST /sessions                   create a session: 201 {"id", "state", "head"}
//	GET  /sessions/{id}              {"id", "state", "head"}
//	GET  /sessions/{id}/events       SSE stream; resume with Last-Event-ID or ?cursor=
//	GET  /sessions/{id}/history      ?before=<cursor|seq>&limit=N: older events as JSON
//	POST /sessions/{id}/send         {"text", "idempotency_key"} (or an Idempotency-Key header): 202 accepted;
//	                                 a retry: 409 in progress, 202 replayed (Idempotency-Replayed: true), 422 other text
//	GET  /healthz                    200 ok, 503 draining
//	POST /sessions/{id}/stop         end the session (answered also when already ended)
//	POST /sessions/{id}/interrupt    cancel the reply being streamed
//	DELETE /sessions/{id}            stop the session if it runs and delete it: 200 {"deleted", "stopped"}; later requests get 410
//	GET  /                           the web page
//
// Every error is a 4xx or 5xx JSON body {"error": "..."}.
//
// # The event stream
//
// Stored events carry "id: <epoch>:<seq>" and one of the types user, delta,
// done, interrupted, failed, restarted and state, with a JSON payload. The stream also
// sends events that are not stored: gap (the cursor was more than the gap
// cap behind: {"skipped", "head", "history"}), reset (the cursor is from
// another epoch, expired or ahead: reload), cutoff (this client fell too far
// behind and is disconnected: resume from {"resume"}), and end (the session
// ended, {"state":"ended"}, or was deleted, {"state":"deleted"}).
// Heartbeats are SSE comments.
//
// # Durable sends
//
// A send answered 202 is a user event in the log before the answer, and its
// place in the stream is its place in the session's queue. A server that
// starts resumes every session that is not ended: the messages with no
// outcome (done, interrupted, failed) run in order, and one whose reply was
// cut mid-way runs again after a restarted event. Shutdown drains: sends
// get 503, running replies get Config.Drain to finish, and the rest stay
// queued in the log.
//
// # Replicas
//
// With a postgres:// DBPath several servers share the sessions: any of them
// serves streams and accepts sends (under the session's advisory lock), and
// the one holding the leader lock runs the agent queues and the sync round;
// see shared.go.
//
// # Sync and retention
//
// Every SyncInterval a sync round visits every session in the event log
// (eventlog.Log.Streams), not only those loaded since the server started, so
// after a restart sessions nobody has touched yet are synced (replies cut
// short by the restart are closed, idle sessions detached) and reported.
// Ended sessions are deleted EndedRetention after they ended (default 24 h):
// their events are freed and the id answers 410 Gone. History pages stop at
// the oldest retained event (eventlog.Log.Oldest) and say when older ones
// were dropped ("truncated").
package server
