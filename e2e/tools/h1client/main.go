// h1client sends POSTs one after another over HTTP/1.1 keep-alive connections, the way the kube-apiserver
// calls a webhook through its Service (its client asks for http/1.1 only, kubernetes/kubernetes#75791, and
// net/http does not send a POST again when a reused connection closes under it). It prints one line per
// failed request ("ERR <error>") and a last line "OK <answered> FAILED <failed>".
//
//	h1client URL DURATION    (the server's certificate is not checked: tests on loopback only)
//	h1client --version       (the hash of this file it was built from; e2e/tools/build.sh)
package main

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// source is set at build time to the SHA-256 of this file.
var source = "unknown"

func main() {
	if len(os.Args) == 2 && os.Args[1] == "--version" {
		fmt.Println("h1client", source)
		return
	}
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: h1client URL DURATION")
		os.Exit(2)
	}
	length, err := time.ParseDuration(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	// The transport settings client-go gives the apiserver's webhook client.
	transport := &http.Transport{
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}},
		MaxIdleConnsPerHost: 25,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	client := &http.Client{Transport: transport, Timeout: 5 * time.Second}
	answered, failed := 0, 0
	for end := time.Now().Add(length); time.Now().Before(end); {
		resp, err := client.Post(os.Args[1], "application/json", bytes.NewReader([]byte("{}")))
		if err != nil {
			failed++
			fmt.Println("ERR", err)
			continue
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		answered++
	}
	fmt.Println("OK", answered, "FAILED", failed)
}
