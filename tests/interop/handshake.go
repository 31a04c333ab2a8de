// handshake: parse Veil certificates with Go's crypto/x509, verify them against the federation
// CA, and complete an mTLS handshake with a running node. Stdlib only.
//
//	go run handshake.go CA.crt NODE.crt CLIENT.crt CLIENT.key HOST:PORT NODENAME
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
)

func load(path string) *x509.Certificate {
	data, err := os.ReadFile(path)
	if err != nil {
		fail("read %s: %v", path, err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		fail("%s: no PEM block", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		fail("parse %s: %v", path, err)
	}
	return cert
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "FAIL "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 7 {
		fail("usage: handshake CA NODE CLIENT CLIENTKEY ADDR NODENAME")
	}
	ca, node, client := load(os.Args[1]), load(os.Args[2]), load(os.Args[3])
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, c := range []*x509.Certificate{node, client} {
		usage := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: usage}); err != nil {
			fail("verify %s: %v", c.Subject, err)
		}
		fmt.Printf("parsed and verified %s\n", c.Subject)
	}
	pair, err := tls.LoadX509KeyPair(os.Args[3], os.Args[4])
	if err != nil {
		fail("client key pair: %v", err)
	}
	conn, err := tls.Dial("tcp", os.Args[5], &tls.Config{
		Certificates: []tls.Certificate{pair},
		RootCAs:      roots,
		ServerName:   os.Args[6],
		NextProtos:   []string{"h2"},
		MinVersion:   tls.VersionTLS12,
	})
	if err != nil {
		fail("handshake with %s: %v", os.Args[5], err)
	}
	defer conn.Close()
	st := conn.ConnectionState()
	if !st.HandshakeComplete || len(st.PeerCertificates) == 0 {
		fail("handshake incomplete")
	}
	if _, err := conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")); err != nil {
		fail("write HTTP/2 preface: %v", err)
	}
	fmt.Printf("handshake ok: version %x alpn %q peer %s\n",
		st.Version, st.NegotiatedProtocol, st.PeerCertificates[0].Subject)
}
