package notify

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	netmail "net/mail"
	"net/url"
	"strconv"
	"strings"
	"time"

	mail "github.com/wneessen/go-mail"
)

// MailConfig configures the SMTP server emails are sent through.
type MailConfig struct {
	// URL is smtp://user:pass@host:port (STARTTLS when the server offers
	// it; port 587 when left out) or smtps://user:pass@host:port (TLS from
	// the first byte; port 465). User and password are optional; when
	// given, the connection must be encrypted or go to localhost before
	// they are sent (go-mail's rule for PLAIN and LOGIN).
	URL string
	// From is the one sender address of every email: "name@example.org" or
	// "Payer Name <name@example.org>".
	From string
	// Timeout bounds connecting and each SMTP exchange; 30s when zero.
	Timeout time.Duration
	// TLSConfig, when set, replaces the default TLS settings (the system
	// roots, the URL's host as server name): tests use it to trust their
	// own certificate.
	TLSConfig *tls.Config
	// HELO is the name the server greets with; the host name when empty.
	HELO string
	// Dial, when set, opens the connections to the mail server (the
	// binary passes its outbound policy's, netguard.Policy.DialContext, so
	// the address dialled is checked after resolution like every other
	// outbound connection); net.Dialer's when nil.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
}

// Mailer sends emails over SMTP with go-mail: one connection per email,
// opened when there is something to send.
type Mailer struct {
	cfg      MailConfig
	host     string
	port     int
	ssl      bool
	user     string
	pass     string
	from     *netmail.Address
	idDomain string
}

// NewMailer checks cfg and returns a Mailer. Nothing is dialled until the
// first Send.
func NewMailer(cfg MailConfig) (*Mailer, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("smtp url: not a URL like smtp://user:pass@host:587")
	}
	m := &Mailer{cfg: cfg, host: u.Hostname()}
	switch u.Scheme {
	case "smtp":
		m.port = 587
	case "smtps":
		m.port, m.ssl = 465, true
	default:
		return nil, fmt.Errorf("smtp url: scheme must be smtp or smtps, not %q", u.Scheme)
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("smtp url: port %q is not a port number", p)
		}
		m.port = n
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" {
		return nil, fmt.Errorf("smtp url: only scheme, user, password, host and port are read; remove the path and query")
	}
	if u.User != nil {
		m.user = u.User.Username()
		m.pass, _ = u.User.Password()
	}
	if cfg.From == "" {
		return nil, fmt.Errorf("mail from: a sender address is required when a mail server is configured")
	}
	from, err := netmail.ParseAddress(cfg.From)
	if err != nil {
		return nil, fmt.Errorf("mail from: %q is not an address like \"Payer <noreply@example.org>\"", cfg.From)
	}
	if err := CheckAddress(from.Address); err != nil {
		return nil, fmt.Errorf("mail from: %w", err)
	}
	m.from = from
	m.idDomain = from.Address[strings.LastIndexByte(from.Address, '@')+1:]
	if m.cfg.Timeout <= 0 {
		m.cfg.Timeout = 30 * time.Second
	}
	return m, nil
}

// Server returns host:port of the mail server, for logs (never the
// password).
func (m *Mailer) Server() string { return net.JoinHostPort(m.host, strconv.Itoa(m.port)) }

// From returns the sender address.
func (m *Mailer) From() string { return m.from.String() }

// Outgoing is one email to send.
type Outgoing struct {
	// ID is the stable notification id: the Message-ID's left part and the
	// X-Notification-Id header, the same on every attempt.
	ID string
	// To is the one recipient.
	To string
	Mail
	// TextOnly leaves the HTML part out.
	TextOnly bool
}

// errRecipientRefused marks a permanent refusal of the recipient (a 5xx
// answer to RCPT TO): sending again will not help.
var errRecipientRefused = errors.New("the mail server permanently refused the recipient")

// Send sends one email. A permanent refusal of the recipient wraps
// errRecipientRefused.
func (m *Mailer) Send(ctx context.Context, o Outgoing) error {
	msg := mail.NewMsg()
	msg.FromMailAddress(m.from)
	if err := msg.To(o.To); err != nil {
		return fmt.Errorf("recipient %q: %w", o.To, err)
	}
	msg.Subject(o.Subject)
	msg.SetMessageIDWithValue(o.ID + "@" + m.idDomain)
	msg.SetGenHeader(mail.Header(HeaderNotificationID), o.ID)
	// RFC 3834: an automatic message; vacation responders stay quiet.
	msg.SetGenHeader(mail.Header("Auto-Submitted"), "auto-generated")
	msg.SetDate()
	if o.TextOnly || o.HTML == "" {
		msg.SetBodyString(mail.TypeTextPlain, o.Text)
	} else {
		msg.SetBodyString(mail.TypeTextPlain, o.Text)
		msg.AddAlternativeString(mail.TypeTextHTML, o.HTML)
	}
	opts := []mail.Option{mail.WithPort(m.port), mail.WithTimeout(m.cfg.Timeout)}
	// WithSSL and WithTLSPolicy leave the port alone (the ...Port variants
	// would move an explicit :25 to 587).
	if m.ssl {
		opts = append(opts, mail.WithSSL())
	} else {
		opts = append(opts, mail.WithTLSPolicy(mail.TLSOpportunistic))
	}
	if m.cfg.TLSConfig != nil {
		opts = append(opts, mail.WithTLSConfig(m.cfg.TLSConfig))
	}
	if m.cfg.HELO != "" {
		opts = append(opts, mail.WithHELO(m.cfg.HELO))
	}
	if m.user != "" {
		opts = append(opts, mail.WithSMTPAuth(mail.SMTPAuthAutoDiscover), mail.WithUsername(m.user), mail.WithPassword(m.pass))
	}
	if m.cfg.Dial != nil {
		opts = append(opts, mail.WithDialContextFunc(m.dial))
	}
	c, err := mail.NewClient(m.host, opts...)
	if err != nil {
		return fmt.Errorf("mail client: %w", err)
	}
	if err := c.DialAndSendWithContext(ctx, msg); err != nil {
		var se *mail.SendError
		if errors.As(err, &se) && se.Reason == mail.ErrSMTPRcptTo && !se.IsTemp() {
			return fmt.Errorf("%w: %v", errRecipientRefused, err)
		}
		return err
	}
	return nil
}

// dial opens a connection with MailConfig.Dial; for smtps it does the TLS
// handshake go-mail leaves to a custom dial function.
func (m *Mailer) dial(ctx context.Context, network, address string) (net.Conn, error) {
	conn, err := m.cfg.Dial(ctx, network, address)
	if err != nil || !m.ssl {
		return conn, err
	}
	cfg := &tls.Config{ServerName: m.host, MinVersion: tls.VersionTLS12}
	if m.cfg.TLSConfig != nil {
		cfg = m.cfg.TLSConfig.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName = m.host
		}
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return tc, nil
}
