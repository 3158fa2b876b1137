package connector

import "time"

// sendStamp is when a lease write was sent, on the two clocks its deadline
// is checked against.
type sendStamp struct {
	mono time.Time     // time.Now: wall and monotonic readings
	boot time.Duration // bootClock; 0 where there is none
}

func stampSend() sendStamp {
	boot, _ := bootClock()
	return sendStamp{mono: time.Now(), boot: boot}
}
