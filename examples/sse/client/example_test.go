package client_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"

	"github.com/steadfast-go/steadfast/examples/sse/client"
	"github.com/steadfast-go/steadfast/examples/sse/server"
)

func Example() {
	// A server on loopback (the example's own, in-process).
	srv, _ := server.New(server.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(ln)
	defer srv.Shutdown(context.Background())
	base := "http://" + ln.Addr().String()

	ctx := context.Background()
	id, _ := client.CreateSession(ctx, nil, base)
	done := make(chan struct{})
	var reply strings.Builder
	c, _ := client.New(client.Config{BaseURL: base, Session: id, OnEvent: func(ev client.Event) {
		var r server.ReplyEvent
		json.Unmarshal(ev.Data, &r)
		switch ev.Type {
		case server.TypeDelta:
			reply.WriteString(r.Text)
		case server.TypeDone:
			close(done)
		}
	}})
	t, _ := c.Send("hello steadfast")
	t.Wait(ctx)
	<-done
	c.Close()
	fmt.Println(t.Status())
	fmt.Println(reply.String())
	// Output:
	// delivered
	// echo: hello steadfast
}
