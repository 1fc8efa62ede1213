package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Bounds on what one command may return. MaxResultBytes is the largest
// encoded result an agent publishes; the broker's packet limit is set just
// above it.
const (
	MaxResultBytes = 8 << 20
	maxTailLines   = 5000
	defTailLines   = 200
	maxTailBytes   = 1 << 20
	maxLineBytes   = 16 << 10
	MaxFileBytes   = 4 << 20
	MaxFrameBytes  = 4 << 20
	maxFrameSide   = 4096
)

// SupportedCommands are the commands this agent can run inside a session.
var SupportedCommands = []string{"ping", "agent_info", "tail_log", "read_file", "get_capabilities", "camera_view", "apply_patch"}

func cmdErr(code, format string, args ...any) error {
	return &CommandError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// decodeArgs reads a command's arguments strictly: unknown fields are an
// error, never ignored.
func decodeArgs(raw json.RawMessage, v any) error {
	if len(raw) == 0 {
		raw = json.RawMessage("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return cmdErr("bad_arguments", "arguments: %v", err)
	}
	return nil
}

// TailResult is what tail_log returns.
type TailResult struct {
	Log             string   `json:"log"`
	Lines           []string `json:"lines"`
	Bytes           int      `json:"bytes"`
	RotatedIncluded bool     `json:"rotated_included,omitempty"`
	TruncatedLines  int      `json:"truncated_lines,omitempty"`
}

func (a *Agent) tailLog(raw json.RawMessage) (any, error) {
	var args struct {
		Log string `json:"log"`
		// Lines is nil when not given (the default); any given count,
		// 0 included, must be in range.
		Lines *int `json:"lines"`
	}
	if err := decodeArgs(raw, &args); err != nil {
		return nil, err
	}
	if args.Log == "" && len(a.cfg.LogFiles) == 1 {
		for name := range a.cfg.LogFiles {
			args.Log = name
		}
	}
	path, ok := a.cfg.LogFiles[strings.ToLower(args.Log)]
	if !ok {
		return nil, cmdErr("unknown_log", "no log named %q is configured (configured: %s)", args.Log, strings.Join(sortedNames(a.cfg.LogFiles), ", "))
	}
	n := defTailLines
	if args.Lines != nil {
		n = *args.Lines
	}
	if n < 1 || n > maxTailLines {
		return nil, cmdErr("bad_arguments", "lines must be 1..%d (leave it out for %d)", maxTailLines, defTailLines)
	}
	res := TailResult{Log: args.Log}
	lines, whole, used, err := tailFile(path, n, maxTailBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, cmdErr("log_unavailable", "log %q does not exist right now", args.Log)
	}
	if err != nil {
		return nil, logErr(args.Log, path, err)
	}
	// A freshly rotated log holds few lines: the rest are in its
	// predecessor, which is held to the same rules: a symlink or a hard
	// link there refuses the command rather than being skipped quietly.
	if whole && len(lines) < n && used < maxTailBytes {
		older, _, u, err := tailFile(path+".1", n-len(lines), maxTailBytes-used)
		switch {
		case errors.Is(err, errSymlink) || errors.Is(err, errHardLink):
			return nil, logErr(args.Log, path+".1", err)
		case err == nil && len(older) > 0:
			lines = append(older, lines...)
			used += u
			res.RotatedIncluded = true
		}
	}
	for i, l := range lines {
		if len(l) > maxLineBytes {
			l = l[:maxLineBytes] + " …[line truncated]"
			res.TruncatedLines++
		}
		// Invalid UTF-8 becomes U+FFFD, so the JSON stays valid text.
		lines[i] = strings.ToValidUTF8(l, "\uFFFD")
	}
	res.Lines, res.Bytes = lines, used
	if res.Lines == nil {
		res.Lines = []string{}
	}
	return res, nil
}

var (
	errSymlink  = errors.New("is a symbolic link")
	errHardLink = errors.New("has more than one hard link")
)

// logErr turns a failure to read a log into its command error.
func logErr(name, path string, err error) error {
	switch {
	case errors.Is(err, errSymlink):
		return cmdErr("symlink_refused", "log %q: %s is a symbolic link; logs are read only as regular files", name, path)
	case errors.Is(err, errHardLink):
		return cmdErr("hard_link_refused", "log %q: %s has more than one hard link; it may be a file from elsewhere", name, path)
	}
	return cmdErr("log_unavailable", "log %q: %v", name, err)
}

// linkCount is a file's number of hard links (1 when unknown).
func linkCount(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Nlink)
	}
	return 1
}

// tailFile returns the last n lines of path, reading at most budget bytes
// from its end; whole says the whole file was read. Whoever can write the
// log's directory could put a symlink or a hard link to any file there:
// neither is followed (errSymlink, errHardLink).
func tailFile(path string, n, budget int) (lines []string, whole bool, used int, err error) {
	// O_NONBLOCK: a FIFO where a log should be must not hang the agent.
	// O_NOFOLLOW: the log itself may not be a symlink (the kernel refuses
	// with ELOOP); the directories above it are the tenant's configuration.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, false, 0, errSymlink
	}
	if err != nil {
		return nil, false, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, false, 0, err
	}
	if !fi.Mode().IsRegular() {
		return nil, false, 0, errors.New("not a regular file")
	}
	// A second name for the same inode: nothing says which one is the log.
	if linkCount(fi) > 1 {
		return nil, false, 0, errHardLink
	}
	size := fi.Size()
	start := size - int64(budget)
	if start < 0 {
		start = 0
	}
	buf := make([]byte, size-start)
	m, err := f.ReadAt(buf, start)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, false, 0, err
	}
	buf = buf[:m]
	text := strings.TrimSuffix(string(buf), "\n")
	if text == "" {
		return nil, start == 0, m, nil
	}
	all := strings.Split(text, "\n")
	if start > 0 {
		all = all[1:] // the first line is cut
	}
	if len(all) > n {
		all = all[len(all)-n:]
	}
	return all, start == 0, m, nil
}

// FileResult is what read_file returns.
type FileResult struct {
	Path          string    `json:"path"`
	Size          int64     `json:"size"`
	Mode          string    `json:"mode"`
	ModTime       time.Time `json:"mod_time"`
	SHA256        string    `json:"sha256"`
	ContentBase64 string    `json:"content_base64"`
	Bytes         int       `json:"bytes"`
}

// pseudoFS are filesystem magic numbers of kernel interfaces: proc,
// sysfs, devtmpfs/tmpfs-backed /dev, debugfs, securityfs, cgroup2.
var pseudoFS = map[int64]bool{0x9fa0: true, 0x62656572: true, 0x1cd1: true, 0x64626720: true, 0x73636673: true, 0x63677270: true}

// forbiddenTrees are never read, whatever the roots say: their "files" are
// kernel interfaces, not files.
var forbiddenTrees = []string{"/proc", "/sys", "/dev"}

func within(path, root string) bool {
	return path == root || strings.HasPrefix(path, strings.TrimSuffix(root, "/")+"/")
}

func (a *Agent) readFile(raw json.RawMessage) (any, error) {
	var args struct {
		Path string `json:"path"`
	}
	if err := decodeArgs(raw, &args); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(args.Path) || strings.ContainsRune(args.Path, 0) {
		return nil, cmdErr("path_not_allowed", "give an absolute path under a readable root")
	}
	clean := filepath.Clean(args.Path)
	for _, t := range forbiddenTrees {
		if within(clean, t) {
			return nil, cmdErr("path_not_allowed", "%s is not readable", t)
		}
	}
	// The longest allowlisted root that holds the path.
	root := ""
	for _, r := range a.cfg.ReadableRoots {
		if within(clean, r) && len(r) > len(root) {
			root = r
		}
	}
	if root == "" {
		return nil, cmdErr("path_not_allowed", "%s is not under a readable root", clean)
	}
	rel, err := filepath.Rel(root, clean)
	if err != nil || rel == "." {
		return nil, cmdErr("not_regular_file", "%s is a directory", clean)
	}
	// os.Root keeps every step inside the root: a symlink leading out of it
	// fails here, whatever the lexical path says.
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, cmdErr("read_failed", "root %s: %v", root, err)
	}
	defer r.Close()
	fi, err := r.Stat(rel)
	if err != nil {
		return nil, rootErr(clean, err)
	}
	if err := checkFile(clean, fi); err != nil {
		return nil, err
	}
	// O_NONBLOCK: should the file have become a FIFO since the Stat, the
	// open does not hang; the Stat below catches it.
	f, err := r.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, rootErr(clean, err)
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return nil, cmdErr("read_failed", "%v", err)
	}
	if err := checkFile(clean, fi); err != nil {
		return nil, err
	}
	// Whatever path led here, kernel interfaces are not files to hand out.
	var fs syscall.Statfs_t
	if err := syscall.Fstatfs(int(f.Fd()), &fs); err != nil || pseudoFS[int64(fs.Type)] {
		return nil, cmdErr("path_not_allowed", "%s is on a kernel pseudo-filesystem", clean)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, cmdErr("read_failed", "%v", err)
	}
	if len(data) > MaxFileBytes {
		return nil, cmdErr("file_too_large", "%s grew past %d bytes while being read", clean, MaxFileBytes)
	}
	sum := sha256.Sum256(data)
	return FileResult{
		Path: clean, Size: int64(len(data)), Mode: fi.Mode().String(), ModTime: fi.ModTime().UTC(),
		SHA256: hex.EncodeToString(sum[:]), ContentBase64: base64.StdEncoding.EncodeToString(data), Bytes: len(data),
	}, nil
}

func checkFile(path string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return cmdErr("not_regular_file", "%s is not a regular file (%s)", path, fi.Mode().Type())
	}
	// os.Root keeps names inside the root, but a hard link is the file
	// itself under a second name: one in a readable root may be a file
	// from anywhere on the same filesystem.
	if linkCount(fi) > 1 {
		return cmdErr("hard_link_refused", "%s has %d hard links; only files with one name are read", path, linkCount(fi))
	}
	if fi.Size() > MaxFileBytes {
		return cmdErr("file_too_large", "%s is %d bytes; the limit is %d", path, fi.Size(), MaxFileBytes)
	}
	return nil
}

func rootErr(path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return cmdErr("file_not_found", "%s does not exist", path)
	case errors.Is(err, fs.ErrPermission):
		return cmdErr("permission_denied", "%s is not readable by the agent", path)
	case strings.Contains(err.Error(), "escapes"):
		return cmdErr("path_not_allowed", "%s leads outside its readable root", path)
	}
	return cmdErr("read_failed", "%s: %v", path, err)
}

func sortedNames(m map[string]string) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// FrameResult is what camera_view returns.
type FrameResult struct {
	Camera     string    `json:"camera"`
	Format     string    `json:"format"`
	Width      int       `json:"width"`
	Height     int       `json:"height"`
	CapturedAt time.Time `json:"captured_at"`
	Bytes      int       `json:"bytes"`
	SHA256     string    `json:"sha256"`
	JPEGBase64 string    `json:"jpeg_base64"`
}

func (a *Agent) cameraView(ctx context.Context, raw json.RawMessage) (any, error) {
	var args struct {
		Camera string `json:"camera"`
	}
	if err := decodeArgs(raw, &args); err != nil {
		return nil, err
	}
	src, ok := a.cfg.Cameras[strings.ToLower(args.Camera)]
	if !ok {
		return nil, cmdErr("unknown_camera", "no camera named %q is configured (configured: %s)", args.Camera, strings.Join(sortedNames(a.cfg.Cameras), ", "))
	}
	captured := time.Now().UTC()
	var frame []byte
	var err error
	if spec, ok := strings.CutPrefix(src, "testpattern"); ok {
		frame, err = testPattern(strings.TrimPrefix(spec, ":"), captured)
	} else {
		frame, err = a.ffmpegFrame(ctx, src)
	}
	if err != nil {
		return nil, err
	}
	cfg, format, err := image.DecodeConfig(bytes.NewReader(frame))
	if err != nil || format != "jpeg" {
		return nil, cmdErr("camera_unavailable", "the source did not give a JPEG frame")
	}
	sum := sha256.Sum256(frame)
	return FrameResult{
		Camera: args.Camera, Format: "jpeg", Width: cfg.Width, Height: cfg.Height, CapturedAt: captured,
		Bytes: len(frame), SHA256: hex.EncodeToString(sum[:]), JPEGBase64: base64.StdEncoding.EncodeToString(frame),
	}, nil
}

// testPattern draws colour bars, for checking the path end to end with no
// camera and no ffmpeg. spec is "WxH" (default 640x480).
func testPattern(spec string, at time.Time) ([]byte, error) {
	w, h := 640, 480
	if spec != "" {
		ws, hs, ok := strings.Cut(spec, "x")
		var err1, err2 error
		w, err1 = strconv.Atoi(ws)
		h, err2 = strconv.Atoi(hs)
		if !ok || err1 != nil || err2 != nil || w < 16 || h < 16 || w > maxFrameSide || h > maxFrameSide {
			return nil, cmdErr("camera_unavailable", "test pattern size %q is not WxH within 16..%d", spec, maxFrameSide)
		}
	}
	bars := []color.RGBA{{192, 192, 192, 255}, {192, 192, 0, 255}, {0, 192, 192, 255}, {0, 192, 0, 255},
		{192, 0, 192, 255}, {192, 0, 0, 255}, {0, 0, 192, 255}}
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	// A moving marker shows frames are fresh.
	marker := int(at.UnixMilli()/100) % w
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			c := bars[x*len(bars)/w]
			if y > h*7/8 && x >= marker && x < marker+w/16 {
				c = color.RGBA{255, 255, 255, 255}
			}
			img.SetRGBA(x, y, c)
		}
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: 80}); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// capWriter keeps at most max bytes; past them it fails, or, with
// discard, drops the rest quietly.
type capWriter struct {
	buf     bytes.Buffer
	max     int
	discard bool
}

var errFrameTooLarge = errors.New("frame too large")

func (w *capWriter) Write(p []byte) (int, error) {
	if w.buf.Len()+len(p) > w.max {
		if w.discard {
			w.buf.Write(p[:max(0, w.max-w.buf.Len())])
			return len(p), nil
		}
		return 0, errFrameTooLarge
	}
	return w.buf.Write(p)
}

// ffmpegArgs is ffmpeg's command line for one frame from src. Beside the
// agent's own time box, ffmpeg is given time limits of its own, so a
// source that hangs cannot keep it: a network read that waits longer than
// ioTimeout fails (-timeout for RTSP, -rw_timeout for every other URL or
// file; lavfi and v4l2 take neither), and -timelimit bounds its CPU time.
func ffmpegArgs(src string, ioTimeout time.Duration) []string {
	us := strconv.FormatInt(ioTimeout.Microseconds(), 10)
	cpu := strconv.Itoa(int(ioTimeout.Round(time.Second)/time.Second) + 1)
	args := []string{"-hide_banner", "-loglevel", "error", "-nostdin", "-timelimit", cpu}
	switch {
	case strings.HasPrefix(src, "lavfi:"):
		args = append(args, "-f", "lavfi", "-i", strings.TrimPrefix(src, "lavfi:"))
	case strings.HasPrefix(src, "rtsp://") || strings.HasPrefix(src, "rtsps://"):
		args = append(args, "-rtsp_transport", "tcp", "-timeout", us, "-i", src)
	case strings.HasPrefix(src, "/dev/video"):
		args = append(args, "-f", "v4l2", "-i", src)
	default:
		args = append(args, "-rw_timeout", us, "-i", src)
	}
	return append(args, "-frames:v", "1", "-f", "image2pipe", "-c:v", "mjpeg", "-q:v", "4", "pipe:1")
}

// ffmpegFrame grabs one frame from a source the tenant's configuration
// names, through an ffmpeg subprocess with a hard timeout and a bounded
// output. The source never comes from the operator. ffmpeg dies with the
// agent (runChild), and gives up by itself a second after the agent's own
// timeout would have ended it.
func (a *Agent) ffmpegFrame(ctx context.Context, src string) ([]byte, error) {
	bin, err := exec.LookPath(a.cfg.FFmpegPath)
	if err != nil {
		return nil, cmdErr("ffmpeg_not_found", "ffmpeg (%s) is not installed on the agent's host", a.cfg.FFmpegPath)
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CameraTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, ffmpegArgs(src, a.cfg.CameraTimeout+time.Second)...)
	out := &capWriter{max: MaxFrameBytes}
	errw := &capWriter{max: 4096, discard: true}
	cmd.Stdout, cmd.Stderr = out, errw
	err = runChild(cmd)
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		return nil, cmdErr("camera_timeout", "no frame within %v", a.cfg.CameraTimeout)
	case errors.Is(err, errFrameTooLarge) || out.buf.Len() >= MaxFrameBytes:
		return nil, cmdErr("frame_too_large", "the frame is over %d bytes", MaxFrameBytes)
	case err != nil:
		msg := strings.TrimSpace(errw.buf.String())
		if msg == "" {
			msg = err.Error()
		}
		return nil, cmdErr("camera_unavailable", "the source did not give a frame: %s", msg)
	case out.buf.Len() == 0:
		return nil, cmdErr("camera_unavailable", "the source gave no frame")
	}
	return out.buf.Bytes(), nil
}

// Capabilities is what get_capabilities reports: advisory, never used to
// authorize anything.
type Capabilities struct {
	AgentVersion          string          `json:"agent_version"`
	StreamingAgentVersion string          `json:"streaming_agent_version,omitempty"`
	OS                    string          `json:"os"`
	Arch                  string          `json:"arch"`
	Kernel                string          `json:"kernel"`
	Hostname              string          `json:"hostname"`
	CPUs                  int             `json:"cpus"`
	CPUModel              string          `json:"cpu_model,omitempty"`
	MemoryTotalBytes      uint64          `json:"memory_total_bytes,omitempty"`
	MemoryAvailableBytes  uint64          `json:"memory_available_bytes,omitempty"`
	Disks                 []DiskInfo      `json:"disks"`
	Cameras               []CameraInfo    `json:"cameras"`
	Codecs                []string        `json:"codecs"`
	LogFiles              []LogFileInfo   `json:"log_files"`
	ReadableRoots         []string        `json:"readable_roots"`
	PatchTargets          []string        `json:"patch_targets"`
	AppliedPatches        json.RawMessage `json:"applied_patches,omitempty"`
	// RolledBackPatches are attempts a crash interrupted, undone when the
	// agent restarted; their ids stay refused.
	RolledBackPatches json.RawMessage `json:"rolled_back_patches,omitempty"`
	Commands          []string        `json:"commands"`
	CollectedAt       time.Time       `json:"collected_at"`
}

// DiskInfo is the space on one filesystem the agent cares about.
type DiskInfo struct {
	Path       string `json:"path"`
	TotalBytes uint64 `json:"total_bytes"`
	FreeBytes  uint64 `json:"free_bytes"`
}

// CameraInfo is one configured camera; its source is not reported (it may
// carry credentials).
type CameraInfo struct {
	Name  string `json:"name"`
	Kind  string `json:"kind"`
	State string `json:"state"`
}

// LogFileInfo is one configured log.
type LogFileInfo struct {
	Name   string `json:"name"`
	Exists bool   `json:"exists"`
	Size   int64  `json:"size"`
}

func (a *Agent) capabilities(ctx context.Context) (any, error) {
	host, _ := os.Hostname()
	c := Capabilities{
		AgentVersion: Version, OS: runtime.GOOS, Arch: runtime.GOARCH, Hostname: host, CPUs: runtime.NumCPU(),
		Disks: []DiskInfo{}, Cameras: []CameraInfo{}, Codecs: []string{}, LogFiles: []LogFileInfo{},
		ReadableRoots: a.cfg.ReadableRoots, PatchTargets: sortedNames(a.cfg.PatchRoots), Commands: SupportedCommands, CollectedAt: time.Now().UTC(),
	}
	if applied, err := AppliedPatches(a.cfg.StateDir); err == nil {
		c.AppliedPatches, _ = json.Marshal(applied)
	}
	if rolled, err := RolledBackPatches(a.cfg.StateDir); err == nil && len(rolled) > 0 {
		c.RolledBackPatches, _ = json.Marshal(rolled)
	}
	if c.ReadableRoots == nil {
		c.ReadableRoots = []string{}
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		c.Kernel = utsString(u.Release[:])
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				c.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				kb, _ := strconv.ParseUint(f[1], 10, 64)
				switch f[0] {
				case "MemTotal:":
					c.MemoryTotalBytes = kb * 1024
				case "MemAvailable:":
					c.MemoryAvailableBytes = kb * 1024
				}
			}
		}
	}
	for _, p := range append([]string{a.cfg.StateDir}, a.cfg.ReadableRoots...) {
		var st syscall.Statfs_t
		if syscall.Statfs(p, &st) == nil {
			c.Disks = append(c.Disks, DiskInfo{Path: p, TotalBytes: st.Blocks * uint64(st.Bsize), FreeBytes: st.Bavail * uint64(st.Bsize)})
		}
	}
	if f := a.cfg.StreamingAgentVersionFile; f != "" {
		if b, err := os.ReadFile(f); err == nil && len(b) < 256 {
			c.StreamingAgentVersion = strings.TrimSpace(string(b))
		}
	}
	for _, name := range sortedNames(a.cfg.LogFiles) {
		li := LogFileInfo{Name: name}
		// Lstat: a symlinked log reports itself, not what it points at.
		if fi, err := os.Lstat(a.cfg.LogFiles[name]); err == nil {
			li.Exists, li.Size = true, fi.Size()
		}
		c.LogFiles = append(c.LogFiles, li)
	}
	_, ffmpegErr := exec.LookPath(a.cfg.FFmpegPath)
	for _, name := range sortedNames(a.cfg.Cameras) {
		src := a.cfg.Cameras[name]
		ci := CameraInfo{Name: name, Kind: cameraKind(src), State: "configured"}
		switch {
		case ci.Kind == "testpattern":
			ci.State = "ready"
		case ffmpegErr != nil:
			ci.State = "ffmpeg_missing"
		case ci.Kind == "v4l2":
			if _, err := os.Stat(src); err != nil {
				ci.State = "device_missing"
			} else {
				ci.State = "ready"
			}
		}
		c.Cameras = append(c.Cameras, ci)
	}
	if ffmpegErr == nil {
		c.Codecs = a.ffmpegCodecs(ctx)
	}
	return c, nil
}

func cameraKind(src string) string {
	switch {
	case strings.HasPrefix(src, "testpattern"):
		return "testpattern"
	case strings.HasPrefix(src, "lavfi:"):
		return "lavfi"
	case strings.HasPrefix(src, "/dev/video"):
		return "v4l2"
	case strings.HasPrefix(src, "rtsp"):
		return "rtsp"
	case strings.HasPrefix(src, "http"):
		return "http"
	}
	return "other"
}

// ffmpegCodecs lists which codecs of interest to a video pipeline the
// host's ffmpeg can decode.
func (a *Agent) ffmpegCodecs(ctx context.Context) []string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, a.cfg.FFmpegPath, "-hide_banner", "-decoders")
	var buf bytes.Buffer
	cmd.Stdout = &buf
	found := []string{}
	if err := runChild(cmd); err != nil {
		return found
	}
	out := buf.Bytes()
	want := map[string]bool{"h264": true, "hevc": true, "mjpeg": true, "mpeg4": true, "vp8": true, "vp9": true, "av1": true, "aac": true, "opus": true}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && len(f[0]) == 6 && want[f[1]] {
			found = append(found, f[1])
			delete(want, f[1])
		}
	}
	sort.Strings(found)
	return found
}

func utsString(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}
