package app_test

import (
	"context"
	"time"
)

func contextWithTimeout(d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	_ = cancel // the context ends by itself; tests are short-lived
	return ctx
}
