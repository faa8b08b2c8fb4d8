package neterr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"syscall"
	"testing"
)

func TestIsTransport(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	for _, tc := range []struct {
		name      string
		err       error
		transport bool
		refused   bool
	}{
		{"nil", nil, false, false},
		{"plain", errors.New("bad request"), false, false},
		{"canceled", context.Canceled, false, false},
		{"deadline", context.DeadlineExceeded, true, false}, // context.DeadlineExceeded is a net.Error (Timeout)
		{"eof", io.EOF, true, false},
		{"wrapped unexpected eof", fmt.Errorf("read body: %w", io.ErrUnexpectedEOF), true, false},
		{"reset", syscall.ECONNRESET, true, false},
		{"pipe", fmt.Errorf("write: %w", syscall.EPIPE), true, false},
		{"dial refused", refused, true, true},
		{"url error", &url.Error{Op: "Post", URL: "http://127.0.0.1:1", Err: refused}, true, true},
		{"bare refused", syscall.ECONNREFUSED, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := IsTransport(tc.err); got != tc.transport {
				t.Errorf("IsTransport(%v) = %v, want %v", tc.err, got, tc.transport)
			}
			if got := IsRefused(tc.err); got != tc.refused {
				t.Errorf("IsRefused(%v) = %v, want %v", tc.err, got, tc.refused)
			}
		})
	}
}
