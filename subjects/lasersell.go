package subjects

import "time"

// KindLaserSell is the first token of every LaserSell subject.
const KindLaserSell = "lasersell"

// LaserSell stream and bucket names.
const (
	StreamLaserSellExit   = "LASERSELL_EXIT"
	StreamLaserSellPnL    = "LASERSELL_PNL"
	StreamLaserSellEvents = "LASERSELL_EVENTS"
	// BucketPositions holds LaserSell open positions, one key per position.
	BucketPositions = "LASERSELL_POSITIONS"
)

// LaserSell is the LaserSell Exit Intelligence Stream's part of the contract.
func LaserSell() Kind {
	return Kind{
		Name: KindLaserSell,
		Streams: []StreamSpec{
			{
				Name:        StreamLaserSellExit,
				Description: "LaserSell exit_signal_with_tx, per session and wallet",
				Subjects:    []string{laserSellExit(Any, Any)},
				Lane:        LaneHigh,
			},
			{
				Name:        StreamLaserSellPnL,
				Description: "LaserSell pnl_update, per session and position",
				Subjects:    []string{laserSellPnL(Any, Any)},
				Lane:        LaneLow,
			},
			{
				Name:        StreamLaserSellEvents,
				Description: "LaserSell server messages other than exits and PnL, connector status, malformed frames",
				Subjects:    eventPatterns(KindLaserSell, join(laserSellEvents(Any), ">")),
				Lane:        LaneHigh,
				// position_opened and balance_update are re-emitted after every reconnect.
				Duplicates: time.Hour,
			},
		},
		Buckets: []BucketSpec{{Name: BucketPositions, Description: "LaserSell open positions", History: 1}},
	}
}

// LaserSellExit is where exit_signal_with_tx for a wallet goes.
func LaserSellExit(session, wallet string) string { return laserSellExit(session, Token(wallet)) }

func laserSellExit(session, wallet string) string {
	return join(KindLaserSell, session, "exit", wallet)
}

// LaserSellPnL is where pnl_update for a position goes.
func LaserSellPnL(session, positionID string) string { return laserSellPnL(session, Token(positionID)) }

func laserSellPnL(session, positionID string) string {
	return join(KindLaserSell, session, "pnl", positionID)
}

// LaserSellEvent is where every other server message goes, one token per type.
func LaserSellEvent(session, msgType, key string) string {
	return laserSellEvent(session, Token(msgType), Token(key))
}

func laserSellEvent(session, msgType, key string) string {
	return join(laserSellEvents(session), msgType, key)
}

// laserSellEvents is the subject prefix of a session's other server messages.
func laserSellEvents(session string) string { return join(KindLaserSell, session, "event") }
