// Package wire writes and reads Server-Sent Events frames, as specified by
// the WHATWG HTML standard ("9.2 Server-sent events").
//
// The writer never produces a frame that a browser would parse differently
// from what was meant: multi-line data is split into one "data:" line per
// line, every line break form (\n, \r, \r\n) counts as a break, and ids and
// event types that would break the framing (a line break, or NUL in an id)
// are refused with ErrInvalidField instead of being sent. The Reader is the
// parser of the standard, used by the Go client and by the tests to check
// the writer (see the fuzz targets).
package wire

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ErrInvalidField: an event id or type contains a line break (or an id
// contains NUL), which the SSE framing cannot carry.
var ErrInvalidField = errors.New("wire: invalid field")

// ErrTooLong: a line or an event exceeded the Reader's size limit.
var ErrTooLong = errors.New("wire: event too long")

// DefaultMaxEventSize is the largest event a Reader accepts unless told
// otherwise.
const DefaultMaxEventSize = 1 << 20

// Event is one SSE event.
type Event struct {
	// ID is the "id:" field. An empty ID is not written.
	ID string
	// Type is the "event:" field; empty means the default "message".
	Type string
	// Data is the payload. Line breaks are written as several data lines and
	// read back as "\n".
	Data string
	// Retry is the reconnection delay in milliseconds ("retry:"), written
	// when > 0.
	Retry int
}

// validID reports whether id can be written as an id field: no line break
// and no NUL (a browser ignores an id containing NUL).
func validID(id string) bool { return !strings.ContainsAny(id, "\r\n\x00") }

func validType(t string) bool { return !strings.ContainsAny(t, "\r\n") }

// AppendEvent appends the frame of ev, terminated by a blank line, to dst.
//
// Errors: ErrInvalidField if ev.ID or ev.Type cannot be framed; dst is then
// returned unchanged.
func AppendEvent(dst []byte, ev Event) ([]byte, error) {
	if ev.Retry > 0 {
		if !validID(ev.ID) || !validType(ev.Type) {
			return AppendFrame(dst, ev.ID, ev.Type, ev.Data) // reports the error
		}
		dst = append(dst, "retry: "...)
		dst = strconv.AppendInt(dst, int64(ev.Retry), 10)
		dst = append(dst, '\n')
	}
	return AppendFrame(dst, ev.ID, ev.Type, ev.Data)
}

// AppendFrame appends an event with the given id (none if empty), type
// (none if empty) and data, terminated by a blank line, to dst. It is
// AppendEvent for callers that hold the id or data as bytes, and allocates
// nothing when dst has room.
//
// Errors: ErrInvalidField if id or typ cannot be framed; dst is then
// returned unchanged.
func AppendFrame[I, D string | []byte](dst []byte, id I, typ string, data D) ([]byte, error) {
	for i := 0; i < len(id); i++ {
		if c := id[i]; c == '\r' || c == '\n' || c == 0 {
			return dst, fmt.Errorf("%w: id %q", ErrInvalidField, id)
		}
	}
	if !validType(typ) {
		return dst, fmt.Errorf("%w: event type %q", ErrInvalidField, typ)
	}
	if len(id) > 0 {
		dst = append(dst, "id: "...)
		dst = append(dst, id...)
		dst = append(dst, '\n')
	}
	if typ != "" {
		dst = append(dst, "event: "...)
		dst = append(dst, typ...)
		dst = append(dst, '\n')
	}
	for {
		i := indexLineBreak(data)
		line := data
		if i >= 0 {
			line = data[:i]
		}
		dst = append(dst, "data: "...)
		dst = append(dst, line...)
		dst = append(dst, '\n')
		if i < 0 {
			break
		}
		if data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n' {
			i++
		}
		data = data[i+1:]
	}
	return append(dst, '\n'), nil
}

func indexLineBreak[S string | []byte](s S) int {
	for i := 0; i < len(s); i++ {
		if s[i] == '\r' || s[i] == '\n' {
			return i
		}
	}
	return -1
}

// AppendComment appends a comment frame (ignored by clients; used as a
// heartbeat) to dst: each line of text prefixed with ':', then a blank line.
func AppendComment(dst []byte, text string) []byte {
	for {
		i := strings.IndexAny(text, "\r\n")
		line := text
		if i >= 0 {
			line = text[:i]
		}
		dst = append(dst, ':')
		dst = append(dst, line...)
		dst = append(dst, '\n')
		if i < 0 {
			break
		}
		if text[i] == '\r' && i+1 < len(text) && text[i+1] == '\n' {
			i++
		}
		text = text[i+1:]
	}
	return append(dst, '\n')
}

// NormalizeData returns data as a Reader returns it after AppendEvent wrote
// it: every line break turned into "\n".
func NormalizeData(data string) string {
	if !strings.ContainsRune(data, '\r') {
		return data
	}
	data = strings.ReplaceAll(data, "\r\n", "\n")
	return strings.ReplaceAll(data, "\r", "\n")
}

// Reader parses an SSE stream. It is not safe for concurrent use; the zero
// value is not usable: create one with NewReader.
type Reader struct {
	br      *bufio.Reader
	max     int
	lastID  string
	pending bool // the previous line ended in '\r' (a following '\n' belongs to it)
	line    []byte
}

// NewReader returns a Reader of r accepting events up to maxEventSize bytes
// (<= 0 means DefaultMaxEventSize).
func NewReader(r io.Reader, maxEventSize int) *Reader {
	if maxEventSize <= 0 {
		maxEventSize = DefaultMaxEventSize
	}
	return &Reader{br: bufio.NewReaderSize(r, 4096), max: maxEventSize}
}

// LastEventID returns the last event id seen, as a browser's lastEventId
// (it persists across events until an id field changes it).
func (r *Reader) LastEventID() string { return r.lastID }

// readLine returns the next line without its terminator. At EOF with a
// partial line it returns io.EOF (an unterminated line is discarded, as the
// standard says for an incomplete event).
func (r *Reader) readLine() ([]byte, error) {
	r.line = r.line[:0]
	for {
		b, err := r.br.ReadByte()
		if err != nil {
			if err == io.EOF && len(r.line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if r.pending {
			r.pending = false
			if b == '\n' && len(r.line) == 0 {
				continue
			}
		}
		switch b {
		case '\n':
			return r.line, nil
		case '\r':
			r.pending = true
			return r.line, nil
		}
		if len(r.line) >= r.max {
			return nil, ErrTooLong
		}
		r.line = append(r.line, b)
	}
}

// Next returns the next dispatched event. Comments and events without a
// data field are skipped, as a browser does. An event with no id field has
// the ID of the last event that had one (the stream's last event id).
//
// Errors: io.EOF at the end of the stream (an incomplete final event is
// discarded), ErrTooLong, or the underlying reader's error.
func (r *Reader) Next() (Event, error) {
	var (
		data    bytes.Buffer
		hasData bool
		typ     string
		retry   int
	)
	for {
		line, err := r.readLine()
		if err != nil {
			if err == io.ErrUnexpectedEOF {
				err = io.EOF
			}
			return Event{}, err
		}
		if len(line) == 0 {
			if !hasData {
				typ = ""
				continue
			}
			b := data.Bytes()
			if len(b) > 0 && b[len(b)-1] == '\n' {
				b = b[:len(b)-1]
			}
			return Event{ID: r.lastID, Type: typ, Data: string(b), Retry: retry}, nil
		}
		if line[0] == ':' {
			continue
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		}
		switch string(field) {
		case "event":
			typ = string(value)
		case "data":
			if data.Len()+len(value)+1 > r.max {
				return Event{}, ErrTooLong
			}
			hasData = true
			data.Write(value)
			data.WriteByte('\n')
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				r.lastID = string(value)
			}
		case "retry":
			if n, ok := parseDigits(value); ok {
				retry = n
			}
		}
	}
}

// parseDigits parses ASCII digits only (the standard ignores any other
// retry value), capping absurd values.
func parseDigits(b []byte) (int, bool) {
	if len(b) == 0 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		if n < 1<<30 {
			n = n*10 + int(c-'0')
		}
	}
	return n, true
}
