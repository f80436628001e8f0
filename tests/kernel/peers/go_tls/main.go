// A Go HTTPS peer for the Go crypto/tls kernel tests, standard library only
// (with -tags grpcpeer, gRPC too: grpc.go).
//
//	go_tls server CERT KEY                 serves until killed; prints its port
//	go_tls client CA URL COUNT h1|h2 DELAY_MS [TRACEPARENT]
//	                                       waits DELAY_MS (an agent that selects
//	                                       processes by executable name picks this
//	                                       one after its exec), then sends COUNT GETs
//	                                       on one connection; prints the statuses
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func serve(cert, key string) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		status := 200
		if r.URL.Path == "/missing" {
			status = 404
		}
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(status)
		fmt.Fprintf(w, "%s %s %s\n", r.Proto, r.Method, r.URL.Path)
	})
	server := &http.Server{Handler: mux}
	fmt.Println(listener.Addr().(*net.TCPAddr).Port)
	os.Stdout.Sync()
	panic(server.ServeTLS(listener, cert, key))
}

func client(ca, url string, count int, proto, traceparent string) {
	pem, err := os.ReadFile(ca)
	if err != nil {
		panic(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	transport := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: proto == "h2",
		MaxConnsPerHost:   1,
	}
	if proto != "h2" {
		transport.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	httpClient := &http.Client{Transport: transport}
	for i := 0; i < count; i++ {
		request, err := http.NewRequest("GET", url, nil)
		if err != nil {
			panic(err)
		}
		if traceparent != "" {
			request.Header.Set("traceparent", traceparent)
		}
		response, err := httpClient.Do(request)
		if err != nil {
			panic(err)
		}
		io.Copy(io.Discard, response.Body)
		response.Body.Close()
		fmt.Println(response.StatusCode, response.Proto)
	}
}

// The peer's commands; grpc.go adds its own when built with -tags grpcpeer.
var commands = map[string]func(args []string){
	"server": func(args []string) { serve(args[0], args[1]) },
	"client": func(args []string) {
		time.Sleep(time.Duration(number(args[4])) * time.Millisecond)
		client(args[0], args[1], number(args[2]), args[3], optional(args, 5))
	},
}

func number(text string) int {
	n, err := strconv.Atoi(text)
	if err != nil {
		panic(err)
	}
	return n
}

func optional(args []string, i int) string {
	if len(args) > i {
		return args[i]
	}
	return ""
}

func main() {
	commands[os.Args[1]](os.Args[2:])
}
