// Package upstream delivers messages to iCloud's submission server.
//
// Invariants: a connection carries the password only after a TLS handshake
// (1.2 or later) whose certificate chain and host name were verified; there is
// no plaintext fallback. STARTTLS on the submission port comes first; when
// that port fails before any SMTP reply after authentication (refused,
// blackholed, broken TLS), implicit TLS on the other port is tried, and the
// port that worked is remembered. Every dial, read and write is bounded by a
// timeout, and every failure is an *Error naming its stage.
//
// # How a failure is classified
//
// Every failure becomes an *Error in one place, Classify, which gives it
// a Class by the first row that matches:
//
//	when                                                      class             what delivery does
//	the relay is shutting down                                retry             nothing is lost: tried again at start
//	the relay's own check: this server cannot take it         permanent         the message fails now
//	  (no SMTPUTF8/8BITMIME for a message that needs it,
//	  a malformed address, no recipient)
//	a 4xx or 5xx reply at MAIL, RCPT or DATA whose text       hold_daily_limit  every message waits until the rolling
//	  says the daily sending limit is reached                                     day allows; none fails for it
//	a 5xx reply at AUTH (wrong password, locked account)      pause_account     every delivery pauses for
//	                                                                              delivery.auth_pause; none fails
//	a 4xx reply at AUTH (too many logins)                     throttled         every delivery waits delivery.retry_min
//	anything before MAIL: DNS, connect, TLS, greeting,        unreachable       messages wait without using retries;
//	  EHLO, STARTTLS, AUTH without a reply                                        a probe sends them all once it answers
//	a 5xx reply at MAIL, RCPT or DATA                         permanent         the message (at RCPT: that recipient)
//	                                                                              fails: failed area and notice
//	anything else (4xx, a connection lost mid-message)        retry             backoff with jitter; given up at
//	                                                                              delivery.max_age
//
// The class is saved with each attempt, logged (field "class") and shown by
// `queue show`; the scheduler acts on nothing else. The remedy follows the
// class and the cause: what to check (Advice: no network or a failing name
// server, a wrong upstream.host or an intercepting proxy, the port blocked,
// the password), then what the relay does by itself.
package upstream
