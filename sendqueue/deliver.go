package sendqueue

import (
	"fmt"
	"time"
)

// action is what the delivery loop does with the head item after an
// attempt.
type action uint8

const (
	delivered action = iota // remove it; its ticket settles Delivered
	failed                  // remove it, report it, settle it Failed
	retry                   // keep it at the head, try again after the back-off
	wait                    // keep it at the head, wait for Resume
)

// decide is the rule for one finished attempt of an item with the given
// policy: sendErr is the send's error (nil: delivered) and class its
// classification (ClassDrop for a panic), attempts counts this attempt.
// It returns what to do and, for failed, the reason to report.
func decide(sendErr error, class Class, policy Policy, attempts, maxAttempts int) (action, error) {
	switch {
	case sendErr == nil:
		return delivered, nil
	case class == ClassDrop:
		return failed, fmt.Errorf("%w: %w", ErrDropped, sendErr)
	case policy == FireAndForget:
		return failed, fmt.Errorf("%w: fire-and-forget send failed: %w", ErrGaveUp, sendErr)
	case maxAttempts > 0 && attempts >= maxAttempts:
		return failed, fmt.Errorf("%w after %d attempts: %w", ErrGaveUp, attempts, sendErr)
	case class == ClassPause:
		return wait, nil
	}
	return retry, nil
}

// sendAttempt is one send of the head item, as taken from the queue.
type sendAttempt[T any] struct {
	item     Item[T]
	ticket   *Ticket
	attempts int    // including this one
	gen      uint64 // resumeGen when the attempt started
}

// result is an attempt's verdict, ready for commit.
type result struct {
	out     action
	sendErr error
	class   Class
	reason  error         // why, for failed
	wait    time.Duration // for retry
}

// backoffState remembers which item and Resume generation the back-off's
// state belongs to, so that a new head or a Resume starts from scratch.
type backoffState struct {
	ticket *Ticket
	gen    uint64
}

// run is the delivery goroutine: peek at the head, send it, then commit.
func (q *Queue[T]) run() {
	defer close(q.loopDone)
	var bs backoffState
	for {
		a, ok := q.next()
		if !ok {
			return
		}
		err, panicked := q.trySend(a.item)
		q.commit(a, q.judge(&bs, a, err, panicked))
	}
}

// next waits until there is an item to send and delivery is not paused,
// marks the head as being sent and returns it; false once the queue is
// closed. The head cannot change while sending is set: Push does not evict
// it and Close waits for this goroutine before emptying.
func (q *Queue[T]) next() (sendAttempt[T], bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for !q.closed && (q.paused || q.buf.Len() == 0) {
		q.idle = true
		q.mu.Unlock()
		select {
		case <-q.wake:
		case <-q.stop:
		}
		q.mu.Lock()
		q.idle = false
	}
	if q.closed {
		return sendAttempt[T]{}, false
	}
	head := q.buf.At(0)
	q.sending = true
	return sendAttempt[T]{head.item, head.ticket, head.attempts + 1, q.resumeGen}, true
}

// judge classifies the attempt's error, decides, and asks the back-off
// for the wait before a retry. It runs without q.mu.
func (q *Queue[T]) judge(bs *backoffState, a sendAttempt[T], err error, panicked bool) result {
	r := result{sendErr: err}
	if err != nil {
		if panicked {
			r.class = ClassDrop // sending it again would panic again
		} else {
			r.class, r.sendErr = q.tryClassify(err)
		}
	}
	r.out, r.reason = decide(r.sendErr, r.class, a.item.Policy, a.attempts, q.maxAttempts)
	if r.out == retry {
		if bs.ticket != a.ticket || bs.gen != a.gen {
			q.bo.Reset()
			*bs = backoffState{a.ticket, a.gen}
		}
		if r.wait = q.bo.NextBackOff(); r.wait == Stop {
			r.out = failed
			r.reason = fmt.Errorf("%w: back-off stopped after %d attempts: %w", ErrGaveUp, a.attempts, r.sendErr)
		}
	}
	if (r.out == delivered || r.out == failed) && bs.ticket != nil {
		q.bo.Reset()
		*bs = backoffState{}
	}
	return r
}

// commit applies the verdict of an attempt to the queue.
func (q *Queue[T]) commit(a sendAttempt[T], r result) {
	q.mu.Lock()
	q.sending = false
	head := q.buf.At(0)
	head.attempts = a.attempts
	if r.sendErr != nil {
		head.lastErr = r.sendErr
	}
	// A Resume that raced with this attempt means the connection is back
	// already: try again instead of waiting for another Resume.
	if r.class == ClassPause && r.sendErr != nil && q.resumeGen == a.gen {
		q.paused = true
	}
	switch r.out {
	case delivered:
		q.popHead()
		a.ticket.settle(Delivered, nil)
		q.signalEmpty()
	case failed:
		s := q.popHead()
		q.settling++
		q.mu.Unlock()
		q.report(Report[T]{Item: s.item, Err: r.reason, Attempts: s.attempts})
		a.ticket.settle(Failed, r.reason)
		q.mu.Lock()
		q.settling--
		q.signalEmpty()
	case retry:
		q.mu.Unlock()
		q.sleep(a.gen, r.wait)
		return
	}
	q.mu.Unlock()
}

// popHead removes the head item and returns it. The caller holds q.mu.
func (q *Queue[T]) popHead() slot[T] {
	s := q.buf.PopFront()
	q.bytes -= int64(s.size)
	return s
}

// sleep waits for the back-off before a retry, or less if Resume or Close
// comes first. Push does not wake it (idle is false).
func (q *Queue[T]) sleep(gen uint64, d time.Duration) {
	q.mu.Lock()
	select {
	case <-q.wake: // stale token from before this attempt
	default:
	}
	resumed := q.resumeGen != gen
	q.mu.Unlock()
	if resumed {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-q.wake:
	case <-q.stop:
	}
}

// trySend calls the send function, turning a panic into an error so that a
// bug in send fails one item (reported, with [ErrDropped]) instead of
// crashing the program from the delivery goroutine.
func (q *Queue[T]) trySend(it Item[T]) (err error, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			err, panicked = fmt.Errorf("sendqueue: send panicked: %v", r), true
		}
	}()
	return q.send(q.sendCtx, it), false
}

// tryClassify calls the classifier. A panic, like a Class that is not one of
// the three, must not stop the loop or make it retry without a back-off: a
// panic drops the item (the error says why), an unknown Class is ClassRetry.
// It returns err, extended with the panic if there was one.
func (q *Queue[T]) tryClassify(sendErr error) (c Class, err error) {
	defer func() {
		if r := recover(); r != nil {
			c, err = ClassDrop, fmt.Errorf("%w (the classifier panicked: %v)", sendErr, r)
		}
	}()
	if c = q.classify(sendErr); c > ClassPause {
		c = ClassRetry
	}
	return c, sendErr
}
