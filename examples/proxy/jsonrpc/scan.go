package jsonrpc

import (
	"bytes"
	"encoding/json"
)

// ScanRequest reads a single request without decoding it: version, id,
// method and params, with ID and Params pointing into data (no copies).
// It is the proxy's hot path; ok is false whenever the message is not
// the plain common shape (not valid JSON, not an object, a key other than
// those four or repeated, keys in another case, escapes in the method or
// version, a method that is not a string), and the caller then uses Parse,
// which decides the exact error or decodes the unusual form. A message it
// accepts decodes to the same fields as Parse would give.
func ScanRequest(data []byte) (m Message, ok bool) {
	if !json.Valid(data) {
		return Message{}, false
	}
	var seen [4]bool
	ok = scanObject(data, func(key, val []byte) bool {
		var k int
		switch string(key) { // no allocation: the compiler compares in place
		case "jsonrpc":
			k = 0
			if !bytes.Equal(val, []byte(`"2.0"`)) {
				return false
			}
			m.JSONRPC = Version
		case "id":
			k = 1
			m.ID = val
		case "method":
			k = 2
			s, plain := plainString(val)
			if !plain {
				return false
			}
			m.Method = string(s)
		case "params":
			k = 3
			m.Params = val
		default:
			return false
		}
		if seen[k] {
			return false
		}
		seen[k] = true
		return true
	})
	if !ok {
		return Message{}, false
	}
	if bytes.Equal(m.ID, Null) {
		m.ID = Null
	}
	return m, true
}

// ScanResult finds the "result" and "error" members of a single response
// (pointing into data). ok is false when data is not one JSON object, or
// has neither member.
func ScanResult(data []byte) (result, errObj json.RawMessage, ok bool) {
	if !json.Valid(data) {
		return nil, nil, false
	}
	ok = scanObject(data, func(key, val []byte) bool {
		switch string(key) {
		case "result":
			result = val
		case "error":
			errObj = val
		}
		return true
	})
	if bytes.Equal(errObj, Null) {
		errObj = nil
	}
	return result, errObj, ok && (len(result) > 0 || len(errObj) > 0)
}

// scanObject calls fn for each member of the JSON object data, which must
// be valid JSON, with the key's bytes (false for any key with escapes)
// and the value's bytes. It stops and returns false when fn does, or when
// data is not an object.
func scanObject(data []byte, fn func(key, val []byte) bool) bool {
	i := skipWS(data, 0)
	if i >= len(data) || data[i] != '{' {
		return false
	}
	i = skipWS(data, i+1)
	if i < len(data) && data[i] == '}' {
		return true
	}
	for i < len(data) {
		end := skipValue(data, i) // the key: a string
		key, plain := plainString(data[i:end])
		if !plain {
			return false
		}
		i = skipWS(data, end)
		i = skipWS(data, i+1) // past ':'
		end = skipValue(data, i)
		if !fn(key, data[i:end]) {
			return false
		}
		i = skipWS(data, end)
		if i >= len(data) || data[i] == '}' {
			return true
		}
		i = skipWS(data, i+1) // past ','
	}
	return false
}

// plainString returns the contents of a JSON string token of printable
// ASCII without escapes; plain is false for anything else.
func plainString(tok []byte) ([]byte, bool) {
	if len(tok) < 2 || tok[0] != '"' || tok[len(tok)-1] != '"' {
		return nil, false
	}
	s := tok[1 : len(tok)-1]
	for _, c := range s {
		if c == '\\' || c < 0x20 || c >= 0x80 { // escapes and non-ASCII: encoding/json's rules apply
			return nil, false
		}
	}
	return s, true
}

func skipWS(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\r', '\n':
			i++
		default:
			return i
		}
	}
	return i
}

// skipValue returns the index just past the value starting at i, in valid
// JSON.
func skipValue(data []byte, i int) int {
	if i >= len(data) {
		return i
	}
	switch data[i] {
	case '"':
		return skipString(data, i)
	case '{', '[':
		depth := 0
		for i < len(data) {
			switch data[i] {
			case '"':
				i = skipString(data, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	}
	for i < len(data) {
		switch data[i] {
		case ',', '}', ']', ' ', '\t', '\r', '\n':
			return i
		}
		i++
	}
	return i
}

// skipString returns the index just past the string starting at i.
func skipString(data []byte, i int) int {
	for i++; i < len(data); i++ {
		switch data[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return i
}

// ScanNotification reads an eth_subscription notification without
// decoding it: the subscription id and the result (pointing into data).
// ok is false for anything else, or an unusual form (escapes in the id),
// which the caller decodes in full.
func ScanNotification(data []byte) (sub []byte, result json.RawMessage, ok bool) {
	if !json.Valid(data) {
		return nil, nil, false
	}
	var method, params []byte
	if !scanObject(data, func(key, val []byte) bool {
		switch string(key) {
		case "method":
			method = val
		case "params":
			params = val
		case "id":
			return false // a request or reply, not a notification
		}
		return true
	}) || !bytes.Equal(method, []byte(`"eth_subscription"`)) {
		return nil, nil, false
	}
	plain := true
	scanObject(params, func(key, val []byte) bool {
		switch string(key) {
		case "subscription":
			sub, plain = plainString(val)
		case "result":
			result = val
		}
		return plain
	})
	return sub, result, plain && len(sub) > 0 && len(result) > 0
}

// Members calls fn with the key and value bytes of each member of the
// JSON object obj, until fn returns false. obj must be valid JSON (a value
// taken from a message ScanNotification or ScanResult accepted is); keys
// with escapes or non-ASCII end the scan. It reports whether obj was an
// object scanned to its end.
func Members(obj []byte, fn func(key, val []byte) bool) bool {
	return scanObject(obj, fn)
}

// PlainString returns the contents of a JSON string token of printable
// ASCII without escapes (a hex quantity, a hash); ok is false otherwise.
func PlainString(tok []byte) (s []byte, ok bool) { return plainString(tok) }
