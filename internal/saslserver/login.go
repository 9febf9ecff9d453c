// Package saslserver adds the server side of SASL LOGIN, which go-sasl lacks
// and which old clients (Outlook, scanners) still use.
package saslserver

import (
	"errors"

	"github.com/emersion/go-sasl"
)

// LoginAuthenticator checks a username and password.
type LoginAuthenticator func(username, password string) error

type loginServer struct {
	auth     LoginAuthenticator
	step     int
	username string
}

// NewLoginServer returns a SASL LOGIN server.
func NewLoginServer(auth LoginAuthenticator) sasl.Server {
	return &loginServer{auth: auth}
}

func (s *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch s.step {
	case 0:
		s.step++
		if response == nil {
			return []byte("Username:"), false, nil
		}
		// An initial response carries the username (RFC draft-murchison-sasl-login).
		s.username = string(response)
		s.step++
		return []byte("Password:"), false, nil
	case 1:
		s.username = string(response)
		s.step++
		return []byte("Password:"), false, nil
	case 2:
		s.step++
		return nil, true, s.auth(s.username, string(response))
	}
	return nil, true, errors.New("saslserver: unexpected LOGIN response")
}
