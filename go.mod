module github.com/steadfast-go/steadfast

go 1.26.0

require (
	github.com/cenkalti/backoff/v4 v4.3.0
	go.uber.org/goleak v1.3.0
	pgregory.net/rapid v1.3.0
)
