package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"
)

// runProbe is `connector probe URL`: a health check for images without curl.
// It succeeds on a 2xx answer within the timeout; anything else is an error
// (exit status 1).
func runProbe(ctx context.Context, args []string, w io.Writer) error {
	url, timeout, err := parseProbe(args, w)
	if err != nil || url == "" {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("probe %s: %s: %s", url, resp.Status, body)
	}
	return nil
}

// parseProbe reads `probe [-timeout 2s] URL`; an empty URL means only help was asked for.
func parseProbe(args []string, w io.Writer) (url string, timeout time.Duration, err error) {
	fs := flag.NewFlagSet("connector probe", flag.ContinueOnError)
	fs.DurationVar(&timeout, "timeout", 2*time.Second, "give up after this long")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: connector probe [-timeout 2s] URL   (exit status 0 on a 2xx answer, else 1)")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, w); err != nil {
		return "", 0, flagError(err)
	}
	if fs.NArg() != 1 {
		return "", 0, badUsage("probe: needs exactly one URL, for example http://127.0.0.1:8080/readyz")
	}
	if timeout <= 0 {
		return "", 0, badUsage("probe: -timeout must be positive")
	}
	return fs.Arg(0), timeout, nil
}
