// Package jsonrpc frames JSON-RPC 2.0 messages for the proxy example: it
// splits a client frame (a single message or a batch) into messages, checks
// each one, and builds error replies, so that malformed input is answered
// with a JSON-RPC error instead of a dropped connection.
//
// Ids and params travel as raw JSON so the proxy forwards them byte for byte.
// All functions are safe for concurrent use; a Message is a plain value and
// is not synchronised.
package jsonrpc

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
)

// Version is the only protocol version this package speaks.
const Version = "2.0"

// Standard JSON-RPC 2.0 error codes, and the proxy's own codes from the
// implementation-defined server-error range (-32000 to -32099).
const (
	CodeParseError     = -32700
	CodeInvalidRequest = -32600
	CodeMethodNotFound = -32601
	CodeInvalidParams  = -32602
	CodeInternalError  = -32603

	// CodeNoUpstream: no healthy upstream could take the request.
	CodeNoUpstream = -32010
	// CodeQueueFull: the request arrived during an upstream switch and the
	// per-connection queue was full.
	CodeQueueFull = -32011
	// CodeUpstreamLost: the upstream failed while the request was in flight
	// and the request is not safe to repeat (eth_sendRawTransaction).
	CodeUpstreamLost = -32012
	// CodeTimeout: no upstream answered in time.
	CodeTimeout = -32013
	// CodeTooManyInFlight: the WebSocket client already has the maximum
	// number of requests awaiting a reply.
	CodeTooManyInFlight = -32014
	// CodeTooManySubscriptions: the WebSocket client already has the
	// maximum number of subscriptions.
	CodeTooManySubscriptions = -32015
	// CodeUnauthorized: the proxy requires a bearer token and the request
	// had none, or an unknown one.
	CodeUnauthorized = -32016
	// CodeLimitExceeded: the client went over its rate limit, or a request
	// over a size limit (EIP-1474's "limit exceeded").
	CodeLimitExceeded = -32005
)

// ErrEmptyBatch is reported (as an invalid-request Error) for "[]".
var ErrEmptyBatch = &Error{Code: CodeInvalidRequest, Message: "empty batch"}

// Error is a JSON-RPC error object. It implements the error interface.
type Error struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data,omitempty"`
}

// Error implements error.
func (e *Error) Error() string {
	return "jsonrpc: " + strconv.Itoa(e.Code) + " " + e.Message
}

// Is reports whether target is an *Error with the same code, so
// errors.Is(err, &jsonrpc.Error{Code: jsonrpc.CodeParseError}) works.
func (e *Error) Is(target error) bool {
	var t *Error
	return errors.As(target, &t) && t.Code == e.Code
}

// Message is one JSON-RPC request, notification or response. Raw fields are
// kept as the bytes received; a missing field has length 0, while an
// explicit null is the four bytes "null".
type Message struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id,omitempty"`
	Method  string          `json:"method,omitempty"`
	Params  json.RawMessage `json:"params,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
	Error   *Error          `json:"error,omitempty"`
}

// HasID reports whether the message carries an id (null counts: a response
// to an unparseable request has id null).
func (m *Message) HasID() bool { return len(m.ID) > 0 }

// IsRequest reports whether m is a call that expects a reply.
func (m *Message) IsRequest() bool { return m.Method != "" && m.HasID() }

// IsNotification reports whether m is a call without an id (for example an
// eth_subscription notification).
func (m *Message) IsNotification() bool { return m.Method != "" && !m.HasID() }

// IsResponse reports whether m is a reply to a request.
func (m *Message) IsResponse() bool {
	return m.Method == "" && (len(m.Result) > 0 || m.Error != nil)
}

// Validate checks the shape of a message received from a client: version
// "2.0" (JSON-RPC 1.0 and unversioned requests are refused), a method
// name, and an id that is a string, a number or null. It returns an
// invalid-request *Error, or nil.
func Validate(m *Message) *Error {
	if m.JSONRPC != Version {
		return &Error{Code: CodeInvalidRequest, Message: `"jsonrpc" must be "2.0"`}
	}
	if m.Method == "" {
		return &Error{Code: CodeInvalidRequest, Message: "missing method"}
	}
	if m.HasID() && !validID(m.ID) {
		return &Error{Code: CodeInvalidRequest, Message: "id must be a string, a number or null"}
	}
	if len(m.Params) > 0 {
		switch firstByte(m.Params) {
		case '[', '{', 'n':
		default:
			return &Error{Code: CodeInvalidRequest, Message: "params must be an array or an object"}
		}
	}
	return nil
}

func validID(id json.RawMessage) bool {
	switch c := firstByte(id); {
	case c == '"', c == 'n', c == '-', c >= '0' && c <= '9':
		return true
	}
	return false
}

func firstByte(b []byte) byte {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		}
		return c
	}
	return 0
}

// Frame is a parsed client frame: one message, or a batch. In a batch,
// Errs[i] is non-nil when element i is not a valid object (it must then be
// answered with Errs[i] and a null id, as JSON-RPC 2.0 requires).
type Frame struct {
	Batch bool
	Msgs  []Message
	Errs  []*Error
}

// Parse splits data into messages. It returns a parse-error *Error
// (CodeParseError) when data is not JSON, and an invalid-request *Error for
// an empty batch or a single value that is not an object. Parse never
// panics, whatever the input.
func Parse(data []byte) (Frame, error) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return Frame{}, &Error{Code: CodeParseError, Message: "parse error: empty message"}
	}
	if data[0] == '[' {
		var raws []json.RawMessage
		if err := json.Unmarshal(data, &raws); err != nil {
			return Frame{}, parseError(err)
		}
		if len(raws) == 0 {
			return Frame{}, ErrEmptyBatch
		}
		f := Frame{Batch: true, Msgs: make([]Message, len(raws)), Errs: make([]*Error, len(raws))}
		for i, r := range raws {
			if firstByte(r) != '{' {
				f.Errs[i] = &Error{Code: CodeInvalidRequest, Message: "batch element is not an object"}
				continue
			}
			if err := json.Unmarshal(r, &f.Msgs[i]); err != nil {
				f.Msgs[i] = Message{}
				f.Errs[i] = &Error{Code: CodeInvalidRequest, Message: "invalid batch element: " + err.Error()}
			}
		}
		return f, nil
	}
	if data[0] != '{' {
		if !json.Valid(data) {
			return Frame{}, &Error{Code: CodeParseError, Message: "parse error: invalid JSON"}
		}
		return Frame{}, &Error{Code: CodeInvalidRequest, Message: "message is not an object"}
	}
	// One pass: Unmarshal checks the whole input is valid JSON before it
	// decodes, so a syntax error here is a parse error and any other error
	// is valid JSON of the wrong shape (e.g. "method": 5).
	f := Frame{Msgs: make([]Message, 1), Errs: make([]*Error, 1)}
	if err := json.Unmarshal(data, &f.Msgs[0]); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return Frame{}, &Error{Code: CodeParseError, Message: "parse error: invalid JSON"}
		}
		return Frame{}, &Error{Code: CodeInvalidRequest, Message: "invalid request: " + err.Error()}
	}
	return f, nil
}

func parseError(err error) *Error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return &Error{Code: CodeParseError, Message: "parse error: " + se.Error()}
	}
	return &Error{Code: CodeParseError, Message: "parse error: " + err.Error()}
}

// Null is the JSON null id used for replies to unparseable requests.
var Null = json.RawMessage("null")

// ErrorResponse encodes a response carrying e for the request id (Null
// when id is empty).
func ErrorResponse(id json.RawMessage, e *Error) []byte {
	if len(id) == 0 {
		id = Null
	}
	b, err := json.Marshal(Message{JSONRPC: Version, ID: id, Error: e})
	if err != nil {
		// Only a malformed id can fail to encode; answer with a null id.
		b, _ = json.Marshal(Message{JSONRPC: Version, ID: Null, Error: e})
	}
	return b
}

// Response encodes a successful response.
func Response(id, result json.RawMessage) []byte {
	if len(result) == 0 {
		result = Null
	}
	b, err := json.Marshal(Message{JSONRPC: Version, ID: id, Result: result})
	if err != nil {
		return ErrorResponse(Null, &Error{Code: CodeInternalError, Message: "unencodable result"})
	}
	return b
}

// Marshal encodes m, filling in the protocol version when missing.
func Marshal(m *Message) ([]byte, error) {
	if m.JSONRPC == "" {
		c := *m
		c.JSONRPC = Version
		return json.Marshal(&c)
	}
	return json.Marshal(m)
}

// JoinBatch encodes already-encoded messages as a batch array.
func JoinBatch(parts [][]byte) []byte {
	n := 2
	for _, p := range parts {
		n += len(p) + 1
	}
	out := make([]byte, 0, n)
	out = append(out, '[')
	for i, p := range parts {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, p...)
	}
	return append(out, ']')
}

// AppendRequest appends a request with a numeric id to b. params, if not
// empty, must be valid JSON (it is copied as is).
func AppendRequest(b []byte, id uint64, method string, params json.RawMessage) []byte {
	b = append(b, `{"jsonrpc":"2.0","id":`...)
	b = strconv.AppendUint(b, id, 10)
	b = append(b, `,"method":`...)
	b = appendString(b, method)
	if len(params) > 0 {
		b = append(b, `,"params":`...)
		b = append(b, params...)
	}
	return append(b, '}')
}

// AppendResult appends a response to b: id and result (or, when errObj is
// not empty, the already-encoded error object instead of a result), both
// copied as they are.
func AppendResult(b []byte, id, result, errObj json.RawMessage) []byte {
	if len(id) == 0 {
		id = Null
	}
	b = append(b, `{"jsonrpc":"2.0","id":`...)
	b = append(b, id...)
	if len(errObj) > 0 {
		b = append(b, `,"error":`...)
		b = append(b, errObj...)
	} else {
		if len(result) == 0 {
			result = Null
		}
		b = append(b, `,"result":`...)
		b = append(b, result...)
	}
	return append(b, '}')
}

// AppendNotification appends an eth_subscription notification for the
// subscription id sub (a string without quotes or escapes, as every
// subscription id is) carrying the already-encoded result.
func AppendNotification(b []byte, sub string, result json.RawMessage) []byte {
	b = append(b, `{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"`...)
	b = append(b, sub...)
	b = append(b, `","result":`...)
	b = append(b, result...)
	return append(b, "}}"...)
}

// appendString appends s as a JSON string: as is when it needs no
// escaping (every method name in practice), through encoding/json
// otherwise.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
