package proxy

import "time"

// LingerBytes is how much of an unread body Server discards before it
// closes the connection.
const LingerBytes = lingerBytes

// SetLingerTime stretches how long Server keeps a connection half-open
// for its reply; the returned func restores it. Call it before the server
// starts and restore only after Close.
func SetLingerTime(d time.Duration) (restore func()) {
	old := lingerTime
	lingerTime = d
	return func() { lingerTime = old }
}
