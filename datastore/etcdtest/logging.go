package etcdtest

import (
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// benign says whether etcd logs msg at error level on every start or stop of a healthy server: the storage
// version check before the first raft term is written, and the serve loops ending when the listeners close.
func benign(msg string) bool {
	switch msg {
	case "failed to update storage version", "setting up serving from embedded etcd failed.":
		return true
	}
	return false
}

// quietLogger logs etcd's errors (and worse) to stderr, but not the benign ones, so a failing test's output
// shows only what matters.
func quietLogger() *zap.Logger {
	core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.Lock(os.Stderr), zap.ErrorLevel)
	return zap.New(quietCore{core})
}

type quietCore struct{ zapcore.Core }

func (c quietCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if benign(e.Message) {
		return ce
	}
	return c.Core.Check(e, ce)
}

func (c quietCore) With(fields []zapcore.Field) zapcore.Core {
	return quietCore{c.Core.With(fields)}
}
