package extproc

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/inflight-dev/inflight/mesh"
)

// CertReloader is the server side of mTLS terminated by this process, from
// the PEM files istio-agent writes when it runs beside a container without
// an Envoy (OUTPUT_CERTS: cert-chain.pem, key.pem, root-cert.pem). Every
// handshake uses the latest good files: Reload (run by Run every interval)
// re-reads them and switches atomically when they changed and are
// consistent (key matches the chain, the leaf verifies against the roots,
// the leaf carries exactly one Istio SPIFFE ID); otherwise the previous
// material stays in use. Clients must present a certificate that verifies
// against the roots; PeerCertAuthenticator then reads its URI SAN.
//
// Safe for concurrent use: handshakes read an atomic pointer; Reload calls
// are serialized.
type CertReloader struct {
	certFile, keyFile, rootFile string

	mu  sync.Mutex // serializes Reload
	cur atomic.Pointer[certState]
}

type certState struct {
	cert, key, roots []byte
	cfg              *tls.Config
	id               mesh.Identity
	notAfter         time.Time
}

// NewCertReloader loads the three files once; it fails if they are missing
// or inconsistent.
func NewCertReloader(certFile, keyFile, rootFile string) (*CertReloader, error) {
	r := &CertReloader{certFile: certFile, keyFile: keyFile, rootFile: rootFile}
	if _, err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// Identity is the SPIFFE identity of the serving certificate now in use.
func (r *CertReloader) Identity() mesh.Identity { return r.cur.Load().id }

// NotAfter is the expiry of the serving certificate now in use.
func (r *CertReloader) NotAfter() time.Time { return r.cur.Load().notAfter }

// ServerConfig returns the tls.Config to give the gRPC server
// (credentials.NewTLS): each handshake takes the current material.
func (r *CertReloader) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return r.cur.Load().cfg, nil
		},
	}
}

// Reload re-reads the files. It reports whether the material in use
// changed; on an error the previous material stays in use.
func (r *CertReloader) Reload() (changed bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var raw [3][]byte
	for i, f := range []string{r.certFile, r.keyFile, r.rootFile} {
		if raw[i], err = os.ReadFile(f); err != nil {
			return false, err
		}
	}
	old := r.cur.Load()
	if old != nil && bytes.Equal(old.cert, raw[0]) && bytes.Equal(old.key, raw[1]) && bytes.Equal(old.roots, raw[2]) {
		return false, nil
	}
	st, err := newCertState(raw[0], raw[1], raw[2])
	if err != nil {
		return false, fmt.Errorf("%s, %s, %s: %w", r.certFile, r.keyFile, r.rootFile, err)
	}
	r.cur.Store(st)
	return true, nil
}

func newCertState(certPEM, keyPEM, rootsPEM []byte) (*certState, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, err
		}
	}
	if len(leaf.URIs) != 1 {
		return nil, fmt.Errorf("serving certificate has %d URI SANs, want exactly one SPIFFE ID", len(leaf.URIs))
	}
	id, ok := mesh.IdentityFromURL(leaf.URIs[0])
	if !ok {
		return nil, fmt.Errorf("serving certificate's URI SAN %q is not an Istio SPIFFE ID", leaf.URIs[0])
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootsPEM) {
		return nil, errors.New("no root certificate found")
	}
	inter := x509.NewCertPool()
	for _, der := range pair.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("serving certificate does not verify against the roots: %w", err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{pair},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    roots,
		NextProtos:   []string{"h2"},
	}
	return &certState{cert: certPEM, key: keyPEM, roots: rootsPEM, cfg: cfg, id: id, notAfter: leaf.NotAfter}, nil
}

// Run calls Reload every interval until ctx ends, logging changes and
// errors (never file contents).
func (r *CertReloader) Run(ctx context.Context, every time.Duration, log *zap.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed, err := r.Reload()
		switch {
		case err != nil:
			log.Warn("mTLS files not reloaded; the previous ones stay in use", zap.Error(err))
		case changed:
			log.Info("mTLS files reloaded", zap.Stringer("identity", r.Identity()), zap.Time("not_after", r.NotAfter()))
		}
	}
}
