//go:build grpcpeer
// +build grpcpeer

// gRPC over TLS for the Go crypto/tls kernel tests, built with Debian's
// packaged grpc-go (GOPATH=/usr/share/gocode, -tags grpcpeer): the standard
// health service, grpc.health.v1.Health/Check.
//
//	go_tls grpc-server CERT KEY                    serves until killed; prints its port
//	go_tls grpc-client CA ADDR COUNT DELAY_MS [TRACEPARENT]
//	                                               waits DELAY_MS, then makes COUNT calls
//	                                               on one connection; prints each status
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

func serveGrpc(cert, key string) {
	creds, err := credentials.NewServerTLSFromFile(cert, key)
	if err != nil {
		panic(err)
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	server := grpc.NewServer(grpc.Creds(creds))
	healthpb.RegisterHealthServer(server, health.NewServer())
	fmt.Println(listener.Addr().(*net.TCPAddr).Port)
	os.Stdout.Sync()
	panic(server.Serve(listener))
}

func grpcClient(ca, addr string, count, delayMs int, traceparent string) {
	time.Sleep(time.Duration(delayMs) * time.Millisecond)
	creds, err := credentials.NewClientTLSFromFile(ca, "localhost")
	if err != nil {
		panic(err)
	}
	conn, err := grpc.Dial(addr, grpc.WithTransportCredentials(creds), grpc.WithBlock())
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	stub := healthpb.NewHealthClient(conn)
	for i := 0; i < count; i++ {
		ctx := context.Background()
		if traceparent != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", traceparent)
		}
		reply, err := stub.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			panic(err)
		}
		fmt.Println(reply.Status)
	}
}

func init() {
	commands["grpc-server"] = func(args []string) { serveGrpc(args[0], args[1]) }
	commands["grpc-client"] = func(args []string) {
		grpcClient(args[0], args[1], number(args[2]), number(args[3]), optional(args, 4))
	}
}
