// Package chunk splits a chat reply into messages no longer than a
// platform's limit (2000 runes on Discord) without breaking code blocks.
//
// Splits are made, in order of preference, after a blank line (a paragraph
// boundary), after a newline, after a space, and only as a last resort in
// the middle of a word. Lengths are counted in runes (an invalid UTF-8 byte
// counts as one rune), never in bytes.
//
// When a split falls inside a fenced code block (a line starting with
// three backticks opens one; the next such line closes it), the chunk is
// closed with a fence line and the next chunk reopens the block with the
// same language, so every chunk renders on its own.
//
// # Contract
//
// [SplitParts] returns parts whose Body fields, concatenated, are exactly the
// input: the only text a chunk adds is its Reopen prefix ("```lang\n") and
// its Close suffix ("```" or "\n```"). Every chunk (Reopen+Body+Close) is at
// most limit runes long and its fences are balanced: read on its own, it
// ends outside a code block. The same holds for an unterminated fence at the
// very end of the input, which the last chunk closes.
package chunk

import (
	"strings"
	"unicode/utf8"
)

// MinLimit is the smallest limit Split accepts: room for the longest reopen
// line (three backticks, a language of up to MaxLang runes and a newline),
// a closing fence and some text.
const MinLimit = 64

// MaxLang is the longest language tag carried over to a reopened code
// block; a longer info string reopens the block without a language.
const MaxLang = 32

// DiscordLimit is Discord's message length limit in characters.
const DiscordLimit = 2000

const fence = "```"

// Part is one chunk of a split reply. Its text is Reopen + Body + Close.
type Part struct {
	Reopen string // "```lang\n" when the chunk continues an open code block, else ""
	Body   string // a contiguous piece of the original text
	Close  string // "```" or "\n```" when the chunk ends inside a code block, else ""
}

// String returns the chunk as sent: Reopen + Body + Close.
func (p Part) String() string { return p.Reopen + p.Body + p.Close }

// Split returns the chunks of text for a platform limit, as strings. It is
// SplitParts with each part joined. An empty text yields no chunks.
//
// Split panics if limit is below MinLimit: a limit is a platform constant,
// not input.
func Split(text string, limit int) []string {
	parts := SplitParts(text, limit)
	out := make([]string, len(parts))
	for i, p := range parts {
		out[i] = p.String()
	}
	return out
}

// SplitParts splits text into parts; see the package documentation for the
// contract. It panics if limit is below MinLimit.
func SplitParts(text string, limit int) []Part {
	if limit < MinLimit {
		panic("chunk: limit below MinLimit")
	}
	var parts []Part
	reopen := ""
	for len(text) > 0 {
		window := limit - utf8.RuneCountInString(reopen)
		body := cut(text, window)
		open, info := state(reopen, body)
		if closeLen(body, open) > 0 && utf8.RuneCountInString(body)+closeLen(body, open) > window {
			// The closing fence does not fit: cut again with room for it.
			// A shorter body still ends inside the block, or ends outside it
			// and needs no close at all; either way it fits now.
			body = cut(text, window-len("\n"+fence))
			open, info = state(reopen, body)
		}
		p := Part{Reopen: reopen, Body: body}
		reopen = ""
		if open {
			if strings.HasSuffix(body, "\n") {
				p.Close = fence
			} else {
				p.Close = "\n" + fence
			}
			reopen = fence + lang(info) + "\n"
		}
		parts = append(parts, p)
		text = text[len(body):]
	}
	return parts
}

func closeLen(body string, open bool) int {
	switch {
	case !open:
		return 0
	case strings.HasSuffix(body, "\n"):
		return len(fence)
	default:
		return len("\n" + fence)
	}
}

// cut returns the longest preferred prefix of text that is at most window
// runes long (window >= 1) and not empty.
func cut(text string, window int) string {
	// Byte offset just after the first window runes.
	end, n := 0, 0
	for end < len(text) && n < window {
		_, size := utf8.DecodeRuneInString(text[end:])
		end += size
		n++
	}
	if end == len(text) {
		return text
	}
	w := text[:end]
	half := len(w) / 2
	// Preferred boundaries: the piece ends with the separator.
	best := -1
	for _, sep := range []string{"\n\n", "\n", " "} {
		i := strings.LastIndex(w, sep)
		if i < 0 {
			continue
		}
		at := i + len(sep)
		if at >= half {
			return w[:at]
		}
		if at > best {
			best = at
		}
	}
	if best > 0 {
		return w[:best]
	}
	return w
}

// state reports whether the text reopen+body, read on its own from the
// start of a line, ends inside a code block, and that block's info string.
func state(reopen, body string) (open bool, info string) {
	s := reopen + body
	for len(s) > 0 {
		line := s
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			line, s = s[:i], s[i+1:]
		} else {
			s = ""
		}
		if strings.HasPrefix(line, fence) {
			open = !open
			if open {
				info = line[len(fence):]
			}
		}
	}
	return open, info
}

// lang extracts the language tag to repeat when reopening a block.
func lang(info string) string {
	f := strings.Fields(info)
	if len(f) == 0 {
		return ""
	}
	l := f[0]
	if utf8.RuneCountInString(l) > MaxLang || strings.ContainsAny(l, "`") || !utf8.ValidString(l) {
		return ""
	}
	return l
}

// Balanced reports whether s, read on its own, ends outside a code block.
// Every chunk produced by Split is balanced.
func Balanced(s string) bool {
	open, _ := state("", s)
	return !open
}
