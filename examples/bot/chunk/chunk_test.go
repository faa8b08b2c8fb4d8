package chunk

import (
	"strings"
	"testing"
	"unicode/utf8"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// check verifies the package contract for one input and returns the parts.
func check(t *testing.T, text string, limit int) []Part {
	t.Helper()
	parts := SplitParts(text, limit)
	if text == "" && len(parts) != 0 {
		t.Fatalf("empty text gave %d parts", len(parts))
	}
	var joined strings.Builder
	for i, p := range parts {
		s := p.String()
		if n := utf8.RuneCountInString(s); n > limit {
			t.Fatalf("part %d has %d runes, limit %d", i, n, limit)
		}
		if p.Body == "" {
			t.Fatalf("part %d has an empty body", i)
		}
		if !Balanced(s) {
			t.Fatalf("part %d is unbalanced: %q", i, s)
		}
		// The only added text is a reopen line and a closing fence.
		if p.Reopen != "" && (!strings.HasPrefix(p.Reopen, "```") || !strings.HasSuffix(p.Reopen, "\n") || strings.Count(p.Reopen, "\n") != 1) {
			t.Fatalf("part %d: bad reopen %q", i, p.Reopen)
		}
		if p.Close != "" && p.Close != "```" && p.Close != "\n```" {
			t.Fatalf("part %d: bad close %q", i, p.Close)
		}
		// A block is reopened exactly when the previous chunk closed one.
		if i == 0 && p.Reopen != "" {
			t.Fatalf("first part reopens a block")
		}
		if i > 0 && (parts[i-1].Close != "") != (p.Reopen != "") {
			t.Fatalf("part %d: reopen %q after close %q", i, p.Reopen, parts[i-1].Close)
		}
		joined.WriteString(p.Body)
	}
	if joined.String() != text {
		t.Fatalf("bodies do not concatenate to the input:\n got %q\nwant %q", joined.String(), text)
	}
	strs := Split(text, limit)
	for i := range strs {
		if strs[i] != parts[i].String() {
			t.Fatalf("Split and SplitParts disagree at %d", i)
		}
	}
	return parts
}

func TestShortTextIsOneChunk(t *testing.T) {
	parts := check(t, "hello world", DiscordLimit)
	if len(parts) != 1 || parts[0].String() != "hello world" {
		t.Fatalf("got %q", Split("hello world", DiscordLimit))
	}
}

func TestSplitsAtParagraphThenLineThenWord(t *testing.T) {
	para := strings.Repeat("a", 60) + "\n\n" + strings.Repeat("b", 30)
	if got := Split(para, 80); got[0] != strings.Repeat("a", 60)+"\n\n" {
		t.Fatalf("paragraph split: %q", got)
	}
	line := strings.Repeat("a", 60) + "\n" + strings.Repeat("b", 30)
	if got := Split(line, 80); got[0] != strings.Repeat("a", 60)+"\n" {
		t.Fatalf("line split: %q", got)
	}
	words := strings.Repeat("word ", 30)
	for _, c := range check(t, words, 64) {
		if strings.HasSuffix(c.Body, "wor") || strings.HasPrefix(c.Body, "d") {
			t.Fatalf("split inside a word: %q", c.Body)
		}
	}
	hard := strings.Repeat("x", 200)
	if got := Split(hard, 64); len(got) != 4 || got[0] != strings.Repeat("x", 64) {
		t.Fatalf("hard split: %q", got)
	}
}

func TestCountsRunesNotBytes(t *testing.T) {
	s := strings.Repeat("é", 100) // 200 bytes
	if got := Split(s, 100); len(got) != 1 {
		t.Fatalf("100 runes split into %d chunks at limit 100", len(got))
	}
	check(t, strings.Repeat("日本語 ", 500), 64)
}

func TestCodeBlockSplitReopensWithLanguage(t *testing.T) {
	var b strings.Builder
	b.WriteString("Here is the fix:\n\n```go\n")
	for i := 0; i < 200; i++ {
		b.WriteString("fmt.Println(\"line\")\n")
	}
	b.WriteString("```\nDone.\n")
	parts := check(t, b.String(), DiscordLimit)
	if len(parts) < 2 {
		t.Fatalf("expected several chunks, got %d", len(parts))
	}
	if parts[0].Close != "```" {
		t.Fatalf("first chunk close = %q", parts[0].Close)
	}
	if parts[1].Reopen != "```go\n" {
		t.Fatalf("second chunk reopen = %q", parts[1].Reopen)
	}
}

func TestUnterminatedFenceIsClosed(t *testing.T) {
	parts := check(t, "```python\nprint(1)", DiscordLimit)
	if parts[len(parts)-1].Close == "" {
		t.Fatal("last chunk left a block open")
	}
}

func TestLongInfoStringReopensWithoutLanguage(t *testing.T) {
	text := "```" + strings.Repeat("z", 100) + "\n" + strings.Repeat("code\n", 100) + "```\n"
	parts := check(t, text, 200)
	if len(parts) < 2 || parts[1].Reopen != "```\n" {
		t.Fatalf("reopen = %q", parts[1].Reopen)
	}
}

func TestLimitBelowMinimumPanics(t *testing.T) {
	defer func() {
		if r := recover(); r == nil || !strings.HasPrefix(r.(string), "chunk: ") {
			t.Fatalf("recover() = %v", r)
		}
	}()
	Split("x", MinLimit-1)
}

// FuzzSplit checks the contract for arbitrary text and limits: no chunk
// over the limit, bodies concatenate to the input exactly (the only added
// text is each chunk's Reopen line and Close fence), fences balanced in
// every chunk.
func FuzzSplit(f *testing.F) {
	seeds := []string{
		"",
		"hello",
		strings.Repeat("word ", 1000),
		"para one\n\npara two\n\n" + strings.Repeat("long line ", 300),
		"```go\n" + strings.Repeat("x := 1\n", 500) + "```\n",
		"```\n" + strings.Repeat("no newline at all ", 300),
		"text ```inline``` text\n```sh\necho hi\n```\n" + strings.Repeat("```\n", 200),
		strings.Repeat("`", 5000),
		strings.Repeat("日本語テキスト", 400),
		"\xff\xfe invalid utf8 " + strings.Repeat("\x80", 3000),
		"```" + strings.Repeat("q", 3000) + "\nbody\n```",
		strings.Repeat("\n", 4000),
		"a\r\n```js\r\n" + strings.Repeat("let a = 1;\r\n", 300) + "```\r\n",
	}
	for i, s := range seeds {
		f.Add(s, uint16(i*97))
	}
	f.Fuzz(func(t *testing.T, text string, l uint16) {
		limit := MinLimit + int(l)%(3*DiscordLimit)
		check(t, text, limit)
	})
}
