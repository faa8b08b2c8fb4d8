// Package neterr holds the one rule steadfast uses to tell a transport
// failure (the peer could not be reached, or the connection broke before an
// answer came back) from an answer that carried an error. sendqueue's
// default classifier and the proxy example both decide with it, so the rule
// is written once.
package neterr

import (
	"errors"
	"io"
	"net"
	"syscall"
)

// IsTransport reports whether err means the request got no answer because
// of the network: any [net.Error] (which includes *url.Error and
// *net.OpError), an unexpected end of the stream (io.EOF,
// io.ErrUnexpectedEOF), or one of the connection errnos ECONNREFUSED,
// ECONNRESET, ECONNABORTED, EPIPE, ETIMEDOUT, ENETUNREACH and EHOSTUNREACH.
// A nil err is not a transport failure, and neither is context.Canceled:
// the caller decides what its own cancellation means.
// context.DeadlineExceeded counts, because it is itself a net.Error (a
// timeout).
func IsTransport(err error) bool {
	if err == nil {
		return false
	}
	if _, ok := errors.AsType[net.Error](err); ok {
		return true
	}
	for _, target := range transportErrs {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

var transportErrs = [...]error{
	io.EOF, io.ErrUnexpectedEOF,
	syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED,
	syscall.EPIPE, syscall.ETIMEDOUT, syscall.ENETUNREACH, syscall.EHOSTUNREACH,
}

// IsRefused reports whether err means the connection was refused at dial
// time (ECONNREFUSED): the request provably never reached the peer, so it
// is safe to send it elsewhere even if it is not idempotent.
func IsRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED)
}
