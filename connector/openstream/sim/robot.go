package sim

import (
	"math"
	"sync"
	"time"
)

// Axes is the number of joints of the simulated arm.
const Axes = 6

// Home returns the joint position (deg) at start, as in the vendor's MONITOR example.
func Home() [Axes]float64 { return [Axes]float64{0, 90, 0, 0, -90, 0} }

// maxQueuedPoints bounds the streamed trajectory so a runaway client cannot exhaust memory.
const maxQueuedPoints = 100000

// trajPoint is one inserted trajectory point: reach To, Dur after the previous point.
type trajPoint struct {
	to  [Axes]float64
	dur time.Duration
}

// robot is the arm shared by all connections of one Server. CONTROL trajectory points move it;
// MONITOR reads it. The position is evaluated lazily at read time (no goroutine): it moves
// linearly from point to point, each segment lasting the point's interval.
type robot struct {
	mu       sync.Mutex
	pos      [Axes]float64
	vel      [Axes]float64 // deg/s of the current segment
	from     [Axes]float64 // start of the current segment
	queue    []trajPoint   // queue[0] is the current segment's target
	segStart time.Time     // zero when idle
	motorOn  bool
	running  bool
	inserted int64
}

func newRobot(motorOn bool) *robot {
	return &robot{pos: Home(), motorOn: motorOn}
}

// advance moves the arm along the queued trajectory up to now. Called with mu held.
func (r *robot) advance(now time.Time) {
	for len(r.queue) > 0 {
		if r.segStart.IsZero() {
			r.segStart, r.from = now, r.pos
		}
		p := r.queue[0]
		el := now.Sub(r.segStart)
		if el >= p.dur {
			r.pos, r.from = p.to, p.to
			r.segStart = r.segStart.Add(p.dur)
			r.queue[0] = trajPoint{}
			r.queue = r.queue[1:]
			continue
		}
		f := float64(el) / float64(p.dur)
		sec := p.dur.Seconds()
		for i := range r.pos {
			d := p.to[i] - r.from[i]
			r.pos[i] = r.from[i] + d*f
			r.vel[i] = d / sec
		}
		return
	}
	r.segStart = time.Time{}
	r.vel = [Axes]float64{}
	if cap(r.queue) > 1024 { // release a large drained backing array
		r.queue = nil
	}
}

// state returns position, velocity and effort at now.
func (r *robot) state(now time.Time) (pos, vel, eff [Axes]float64) {
	r.mu.Lock()
	r.advance(now)
	pos, vel = r.pos, r.vel
	r.mu.Unlock()
	return pos, vel, effort(pos)
}

func (r *robot) joints(now time.Time) [Axes]float64 {
	p, _, _ := r.state(now)
	return p
}

// insert queues a trajectory point. It reports false when the queue is full.
func (r *robot) insert(now time.Time, p trajPoint) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.advance(now)
	if len(r.queue) >= maxQueuedPoints {
		return false
	}
	r.queue = append(r.queue, p)
	r.inserted++
	r.advance(now) // a zero interval takes effect at once
	return true
}

// hold drops the queued trajectory; the arm stays where it is now.
func (r *robot) hold(now time.Time) {
	r.mu.Lock()
	r.advance(now)
	r.queue, r.segStart, r.vel = nil, time.Time{}, [Axes]float64{}
	r.mu.Unlock()
}

func (r *robot) setMotor(now time.Time, on bool) {
	r.mu.Lock()
	if !on {
		r.advance(now)
		r.queue, r.segStart, r.vel = nil, time.Time{}, [Axes]float64{}
		r.running = false
	}
	r.motorOn = on
	r.mu.Unlock()
}

func (r *robot) motor() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.motorOn
}

// effort is a rough gravity model (Nm) so that the field is plausible and follows the pose.
func effort(p [Axes]float64) (e [Axes]float64) {
	const rad = math.Pi / 180
	forearm := (p[1] - 90 - p[2]) * rad
	e[1] = 60*math.Cos(p[1]*rad) + 95*math.Cos(forearm)
	e[2] = 95 * math.Cos(forearm)
	e[4] = -6 * math.Cos(forearm+(p[4]+90)*rad)
	return e
}

// pose is the tool flange pose: mm and degrees, R = Rz(rz)·Ry(ry)·Rx(rx) in the base frame.
type pose struct{ x, y, z, rx, ry, rz float64 }

type mat4 [4][4]float64

func (a mat4) mul(b mat4) (c mat4) {
	for i := 0; i < 4; i++ {
		for j := 0; j < 4; j++ {
			for k := 0; k < 4; k++ {
				c[i][j] += a[i][k] * b[k][j]
			}
		}
	}
	return c
}

// dh is one standard Denavit-Hartenberg link transform.
func dh(theta, d, a, alpha float64) mat4 {
	ct, st, ca, sa := math.Cos(theta), math.Sin(theta), math.Cos(alpha), math.Sin(alpha)
	return mat4{{ct, -st * ca, st * sa, a * ct}, {st, ct * ca, -ct * sa, a * st}, {0, sa, ca, d}, {0, 0, 0, 1}}
}

// forward is the forward kinematics of a generic 6R industrial arm whose dimensions are chosen
// so that joints [0,90,0,0,0,0] give x=1782 z=1938 ry=90, like the vendor's po_cur example. It is
// plausible, not the kinematics of a particular Hyundai model.
func forward(j [Axes]float64) pose {
	const rad = math.Pi / 180
	t := dh(j[0]*rad, 600, 300, math.Pi/2).
		mul(dh(j[1]*rad, 0, 1100, 0)).
		mul(dh(j[2]*rad, 0, 238, math.Pi/2)).
		mul(dh(j[3]*rad, 1282, 0, -math.Pi/2)).
		mul(dh(j[4]*rad, 0, 0, math.Pi/2)).
		mul(dh((j[5]+180)*rad, 200, 0, 0))
	p := pose{x: t[0][3], y: t[1][3], z: t[2][3]}
	c := math.Hypot(t[0][0], t[1][0])
	p.ry = math.Atan2(-t[2][0], c)
	if c < 1e-9 { // gimbal lock: rx and rz share one axis; put it all in rz
		p.rz = math.Atan2(-t[0][1], t[1][1])
	} else {
		p.rz = math.Atan2(t[1][0], t[0][0])
		p.rx = math.Atan2(t[2][1], t[2][2])
	}
	p.rx, p.ry, p.rz = p.rx/rad, p.ry/rad, p.rz/rad
	return p
}
