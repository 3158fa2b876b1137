package sim

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// REST services of the simulated controller (the Open API that MONITOR and CONTROL invoke).
const (
	PathHealth       = "/api/health"
	PathJointStates  = "/project/robot/joints/joint_states"
	PathPoseCur      = "/project/robot/po_cur"
	PathMotorOnState = "/project/robot/motor_on_state"
	PathMotorOn      = "/project/robot/motor_on"
	PathMotorOff     = "/project/robot/motor_off"
	PathStart        = "/project/robot/start"
	PathStop         = "/project/robot/stop"
	PathTrajInit     = "/project/robot/trajectory/joint_traject_init"
	PathTrajInsertPt = "/project/robot/trajectory/joint_traject_insert_point"
)

// maxIntervalSecond bounds one trajectory segment.
const maxIntervalSecond = 60.0

// isGetPath and isPostPath route by method; a known path with the wrong method is 405.
func isGetPath(path string) bool {
	switch path {
	case PathHealth, PathJointStates, PathPoseCur, PathMotorOnState:
		return true
	}
	return false
}

func isPostPath(path string) bool {
	switch path {
	case PathMotorOn, PathMotorOff, PathStart, PathStop, PathTrajInit, PathTrajInsertPt:
		return true
	}
	return false
}

// getter produces one REST GET response: the body is appended to dst (nothing appended means an
// empty body) and the HTTP status returned. MONITOR compiles its recipe into a getter once, so
// the periodic path only formats numbers.
type getter func(dst []byte, now time.Time) ([]byte, int)

// restError is the JSON body of a failing REST call.
func restError(status int, msg string) []byte {
	b := append([]byte(`{"_type":"JObject","code":`), strconv.Itoa(status)...)
	b = append(b, `,"message":`...)
	b = appendString(b, msg)
	return append(b, '}')
}

func staticGetter(status int, body []byte) getter {
	return func(dst []byte, _ time.Time) ([]byte, int) { return append(dst, body...), status }
}

// compileGet resolves a GET of path with query args. Unknown paths answer 404 and known paths
// that only take POST answer 405, both with an empty body (so MONITOR data carries "status"
// instead of "result"); bad query arguments answer 400 with an error body.
func (s *Server) compileGet(path string, q map[string]string) getter {
	switch path {
	case PathHealth:
		return staticGetter(http.StatusOK, []byte(`{"status":"ok"}`))
	case PathMotorOnState:
		return func(dst []byte, _ time.Time) ([]byte, int) {
			val := 2
			if s.robot.motor() {
				val = 0
			}
			dst = append(dst, `{"_type":"JObject","val":`...)
			dst = strconv.AppendInt(dst, int64(val), 10)
			return append(dst, '}'), http.StatusOK
		}
	case PathJointStates:
		start, n, msg := jointRange(q)
		if msg != "" {
			return staticGetter(http.StatusBadRequest, restError(http.StatusBadRequest, msg))
		}
		return func(dst []byte, now time.Time) ([]byte, int) {
			pos, vel, eff := s.robot.state(now)
			dst = append(dst, `{"_type":"JObject","position":`...)
			dst = appendNums(dst, pos[start:start+n])
			dst = append(dst, `,"velocity":`...)
			dst = appendNums(dst, vel[start:start+n])
			dst = append(dst, `,"effort":`...)
			dst = appendNums(dst, eff[start:start+n])
			return append(dst, '}'), http.StatusOK
		}
	case PathPoseCur:
		return s.compilePose(q)
	}
	if isPostPath(path) {
		return staticGetter(http.StatusMethodNotAllowed, nil)
	}
	return staticGetter(http.StatusNotFound, nil)
}

// jointRange reads jno_start (1-based) and jno_n; it returns a 0-based start and count.
func jointRange(q map[string]string) (start, n int, msg string) {
	start, n = 1, -1
	if v, ok := q["jno_start"]; ok {
		x, err := strconv.Atoi(v)
		if err != nil || x < 1 || x > Axes {
			return 0, 0, "jno_start must be an integer 1.." + strconv.Itoa(Axes)
		}
		start = x
	}
	if v, ok := q["jno_n"]; ok {
		x, err := strconv.Atoi(v)
		if err != nil || x < 1 {
			return 0, 0, "jno_n must be a positive integer"
		}
		n = x
	}
	if n < 0 || start-1+n > Axes {
		n = Axes - start + 1
	}
	return start - 1, n, ""
}

// compilePose answers po_cur. crd absent: base pose plus joints; 0 base, 1 robot, 3 user: pose;
// 2 joint: joints only; negative: the current recording frame (base here).
func (s *Server) compilePose(q map[string]string) getter {
	crd := -2 // absent
	if v, ok := q["crd"]; ok {
		x, err := strconv.Atoi(v)
		if err != nil || x > 3 {
			return staticGetter(http.StatusBadRequest, restError(http.StatusBadRequest, "crd must be an integer <= 3"))
		}
		crd = max(x, -1)
	}
	mech := 1
	if v, ok := q["mechinfo"]; ok {
		x, err := strconv.Atoi(v)
		if err != nil {
			return staticGetter(http.StatusBadRequest, restError(http.StatusBadRequest, "mechinfo must be an integer"))
		}
		mech = x
	}
	for _, k := range []string{"task_no", "ucrd_no"} {
		if v, ok := q[k]; ok {
			if x, err := strconv.Atoi(v); err != nil || x < 0 {
				return staticGetter(http.StatusBadRequest, restError(http.StatusBadRequest, k+" must be a non-negative integer"))
			}
		}
	}
	name := map[int]string{-2: "base", -1: "base", 0: "base", 1: "robot", 2: "joint", 3: "user"}[crd]
	return func(dst []byte, now time.Time) ([]byte, int) {
		j := s.robot.joints(now)
		dst = append(dst, `{"nsync":0,"_type":"Pose"`...)
		if crd != 2 {
			p := forward(j)
			for _, f := range [...]struct {
				k string
				v float64
			}{{"x", p.x}, {"y", p.y}, {"z", p.z}, {"rx", p.rx}, {"ry", p.ry}, {"rz", p.rz}} {
				dst = append(dst, ',', '"')
				dst = append(dst, f.k...)
				dst = append(dst, '"', ':')
				v := f.v
				if math.Abs(v) < 5e-7 { // rounding noise of the kinematics, not a real "-0.0"
					v = 0
				}
				dst = appendNum(dst, v)
			}
		}
		dst = append(dst, `,"mechinfo":`...)
		dst = strconv.AppendInt(dst, int64(mech), 10)
		dst = append(dst, `,"crd":`...)
		dst = appendString(dst, name)
		if crd == 2 || crd == -2 {
			for i, v := range j {
				dst = append(dst, `,"j`...)
				dst = strconv.AppendInt(dst, int64(i+1), 10)
				dst = append(dst, '"', ':')
				dst = appendNum(dst, v)
			}
		}
		return append(dst, '}'), http.StatusOK
	}
}

// okBody is the body of a successful POST, as the REST API answers it.
const okBody = `{"_type":"JObject"}`

// control executes one POST/PUT/DELETE REST call. It returns the status and, for failures, the
// error body (nil when the REST API sends none).
func (s *Server) control(now time.Time, method, path string, body json.RawMessage) (int, []byte) {
	if !isPostPath(path) {
		if isGetPath(path) {
			return http.StatusMethodNotAllowed, nil
		}
		return http.StatusNotFound, nil
	}
	if method != http.MethodPost {
		return http.StatusMethodNotAllowed, nil
	}
	r := s.robot
	switch path {
	case PathMotorOn:
		r.setMotor(now, true)
	case PathMotorOff:
		r.setMotor(now, false)
	case PathStart:
		r.mu.Lock()
		on := r.motorOn
		if on {
			r.running = true
		}
		r.mu.Unlock()
		if !on {
			return http.StatusConflict, restError(http.StatusConflict, "motor is off: turn the motor on before start")
		}
	case PathStop:
		r.mu.Lock()
		r.running = false
		r.mu.Unlock()
		r.hold(now)
	case PathTrajInit:
		r.hold(now)
	case PathTrajInsertPt:
		p, msg := parsePoint(body)
		if msg != "" {
			return http.StatusBadRequest, restError(http.StatusBadRequest, msg)
		}
		if !r.motor() {
			return http.StatusConflict, restError(http.StatusConflict, "motor is off: trajectory rejected")
		}
		if !r.insert(now, p) {
			return http.StatusServiceUnavailable, restError(http.StatusServiceUnavailable, "trajectory buffer full")
		}
	}
	return http.StatusOK, nil
}

// parsePoint validates a joint_traject_insert_point body.
func parsePoint(body json.RawMessage) (trajPoint, string) {
	var b struct {
		Interval      *float64   `json:"interval"`
		TimeFromStart *float64   `json:"time_from_start"`
		LookAheadTime *float64   `json:"look_ahead_time"`
		Point         *[]float64 `json:"point"`
	}
	if len(body) == 0 || body[0] != '{' {
		return trajPoint{}, "body must be an object with point[6]"
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return trajPoint{}, "bad trajectory point: " + err.Error()
	}
	if b.Point == nil || len(*b.Point) != Axes {
		return trajPoint{}, "point must hold " + strconv.Itoa(Axes) + " joint angles (deg)"
	}
	var p trajPoint
	for i, v := range *b.Point {
		if math.Abs(v) > 360 {
			return trajPoint{}, "joint angle out of range (-360..360 deg)"
		}
		p.to[i] = v
	}
	iv := 0.005 // the vendor's example interval
	if b.Interval != nil {
		iv = *b.Interval
	}
	if iv < 0 || iv > maxIntervalSecond {
		return trajPoint{}, "interval must be 0..60 s"
	}
	p.dur = time.Duration(iv * float64(time.Second))
	return p, ""
}

// ServeHTTP serves the same REST services over HTTP, like the controller's Open API on port
// 8888 (the vendor's CONTROL example reads the start pose that way).
func (s *Server) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	now := time.Now()
	q := map[string]string{}
	for k, v := range req.URL.Query() {
		if len(v) > 0 {
			q[k] = v[0]
		}
	}
	var status int
	var body []byte
	switch req.Method {
	case http.MethodGet:
		body, status = s.compileGet(req.URL.Path, q)(nil, now)
	case http.MethodPost, http.MethodPut, http.MethodDelete:
		raw, err := io.ReadAll(io.LimitReader(req.Body, 1<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		raw = bytes.TrimSpace(raw)
		if len(raw) > 0 && !json.Valid(raw) {
			status, body = http.StatusBadRequest, restError(http.StatusBadRequest, "body is not JSON")
			break
		}
		status, body = s.control(now, req.Method, req.URL.Path, raw)
		if status == http.StatusOK {
			body = []byte(okBody)
		}
	default:
		status = http.StatusMethodNotAllowed
	}
	s.log.Debug().Str("method", req.Method).Str("url", req.URL.String()).Int("status", status).Msg("http")
	if len(body) > 0 {
		w.Header().Set("Content-Type", "application/json")
	}
	w.WriteHeader(status)
	w.Write(body)
}

// queryString renders a JSON scalar as a query parameter value; ok is false for objects,
// arrays and null.
func queryString(raw json.RawMessage) (string, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "", false
	}
	switch raw[0] {
	case '"':
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return "", false
		}
		return s, true
	case 't', 'f':
		return string(raw), true
	case '{', '[', 'n':
		return "", false
	}
	return strings.TrimSpace(string(raw)), true // a number, kept as written
}
