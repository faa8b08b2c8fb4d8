package sendqueue

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/steadfast-go/steadfast/internal/neterr"
)

// Class is what the delivery loop does with an item whose send failed,
// as decided by the classifier. The zero value is [ClassRetry].
type Class uint8

const (
	// ClassRetry keeps the item at the head and tries it again after the
	// back-off.
	ClassRetry Class = iota
	// ClassDrop removes the item and reports it with [ErrDropped]: the
	// receiver refused it and sending it again cannot help.
	ClassDrop
	// ClassPause keeps the item at the head and pauses the queue until
	// [Queue.Resume]: the connection is down.
	ClassPause
)

// String returns "retry", "drop" or "pause".
func (c Class) String() string {
	switch c {
	case ClassRetry:
		return "retry"
	case ClassDrop:
		return "drop"
	case ClassPause:
		return "pause"
	}
	return fmt.Sprintf("Class(%d)", uint8(c))
}

// StatusCoder is implemented by errors that carry an HTTP status code, such
// as [*HTTPError]. [DefaultClassifier] looks for it with errors.As.
type StatusCoder interface {
	error
	// HTTPStatus returns the response's HTTP status code, e.g. 404.
	HTTPStatus() int
}

// HTTPError is a send error for a response with a non-success HTTP status.
// A send function returns it (or wraps it) so that [DefaultClassifier] can
// tell a stale connection (404) from a bad request (400). It is a plain
// value; a zero HTTPError has status 0, which DefaultClassifier drops.
type HTTPError struct {
	StatusCode int    // the response's status code, e.g. 404
	Body       string // optional: the start of the response body, for reports
}

// Error returns a message such as "sendqueue: HTTP 404 Not Found".
func (e *HTTPError) Error() string {
	s := fmt.Sprintf("sendqueue: HTTP %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	if e.Body != "" {
		s += ": " + e.Body
	}
	return s
}

// HTTPStatus returns e.StatusCode.
func (e *HTTPError) HTTPStatus() int { return e.StatusCode }

// DefaultClassifier is the classifier a [Queue] uses unless [WithClassifier]
// is given:
//
//   - errors wrapping [ErrDisconnected]: [ClassPause];
//   - errors carrying an HTTP status ([StatusCoder]): 404 (a stale
//     connection id after a reconnect: the incident this package comes
//     from), 408, 425, 429 and 5xx are [ClassRetry]; any other status is
//     [ClassDrop];
//   - network and transport errors ([net.Error], which includes
//     *url.Error, io.EOF, io.ErrUnexpectedEOF, ECONNREFUSED, ECONNRESET,
//     ECONNABORTED, EPIPE, ETIMEDOUT, ENETUNREACH, EHOSTUNREACH) and
//     context.DeadlineExceeded or context.Canceled: [ClassRetry];
//   - anything else (for example an encoding error): [ClassDrop], so a
//     broken item is reported instead of blocking the queue forever.
func DefaultClassifier(err error) Class {
	if errors.Is(err, ErrDisconnected) {
		return ClassPause
	}
	if sc, ok := errors.AsType[StatusCoder](err); ok {
		switch code := sc.HTTPStatus(); {
		case code == http.StatusNotFound, code == http.StatusRequestTimeout,
			code == http.StatusTooEarly, code == http.StatusTooManyRequests,
			code >= 500 && code <= 599:
			return ClassRetry
		default:
			return ClassDrop
		}
	}
	if neterr.IsTransport(err) || errors.Is(err, context.Canceled) {
		return ClassRetry
	}
	return ClassDrop
}
