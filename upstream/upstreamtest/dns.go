package upstreamtest

import (
	"context"
	"encoding/binary"
	"net"
	"sync"
)

// DNSAnswer is how the stand-in name server answers.
type DNSAnswer int

const (
	DNSLoopback DNSAnswer = iota // every name is 127.0.0.1
	DNSNotFound                  // NXDOMAIN: the name does not exist
	DNSFailure                   // SERVFAIL: the server cannot answer
	DNSSilent                    // no answer at all (a timeout)
)

// DNS is a stand-in name server on loopback UDP, so that tests of name
// lookups never ask a real one. Resolver returns a resolver that uses it.
type DNS struct {
	conn   net.PacketConn
	mu     sync.Mutex
	answer DNSAnswer
}

// NewDNS starts a name server answering as answer; Close stops it.
func NewDNS(answer DNSAnswer) (*DNS, error) {
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	d := &DNS{conn: conn, answer: answer}
	go d.serve()
	return d, nil
}

// Set changes the answer.
func (d *DNS) Set(answer DNSAnswer) {
	d.mu.Lock()
	d.answer = answer
	d.mu.Unlock()
}

func (d *DNS) Close() error { return d.conn.Close() }

// Resolver asks this server only, over UDP on loopback.
func (d *DNS) Resolver() *net.Resolver {
	addr := d.conn.LocalAddr().String()
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "udp", addr)
	}}
}

func (d *DNS) serve() {
	buf := make([]byte, 512)
	for {
		n, from, err := d.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		d.mu.Lock()
		answer := d.answer
		d.mu.Unlock()
		if reply := dnsReply(buf[:n], answer); reply != nil {
			d.conn.WriteTo(reply, from)
		}
	}
}

// dnsReply answers one query (RFC 1035 §4.1): the header and question
// copied, and for DNSLoopback an A record 127.0.0.1 (AAAA: no records).
func dnsReply(q []byte, answer DNSAnswer) []byte {
	if len(q) < 12 || answer == DNSSilent || binary.BigEndian.Uint16(q[4:]) != 1 {
		return nil
	}
	end := 12
	for end < len(q) && q[end] != 0 { // the question's name
		end += int(q[end]) + 1
	}
	end += 5 // the root label, QTYPE, QCLASS
	if end > len(q) {
		return nil
	}
	qtype := binary.BigEndian.Uint16(q[end-4:])
	r := append([]byte(nil), q[:end]...)
	flags := uint16(0x8180) | binary.BigEndian.Uint16(q[2:])&0x0100 // QR, RA; RD as asked
	switch answer {
	case DNSNotFound:
		flags |= 3
	case DNSFailure:
		flags |= 2
	}
	binary.BigEndian.PutUint16(r[2:], flags)
	binary.BigEndian.PutUint16(r[6:], 0) // ANCOUNT
	binary.BigEndian.PutUint16(r[8:], 0)
	binary.BigEndian.PutUint16(r[10:], 0)
	if answer == DNSLoopback && qtype == 1 {
		binary.BigEndian.PutUint16(r[6:], 1)
		r = append(r, 0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1)
	}
	return r
}
