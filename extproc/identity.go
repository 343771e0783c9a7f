package extproc

import (
	"context"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/inflight-dev/inflight/mesh"
)

// Authenticator returns the mesh identity of the proxy that opened a
// stream, from the stream's context. ok is false when the identity cannot be
// established: the stream's request then counts for nobody
// (mesh.ReasonUnauthenticated). Implementations must be safe for concurrent
// use and cheap: Caller runs once per request.
type Authenticator interface {
	Caller(ctx context.Context) (id mesh.Identity, ok bool)
}

// XFCCAuthenticator reads the caller from the x-forwarded-client-cert
// metadata that the extproc's own Istio sidecar adds after terminating the
// caller's mTLS (ENVOY.md §6). Only the last element is read, and only if
// its By is the extproc's own identity, i.e. it was added by the sidecar
// in front of this process and not forwarded from the caller. A stream with
// no, several, malformed or foreign XFCC values is unauthenticated.
type XFCCAuthenticator struct {
	// By is the extproc's own SPIFFE ID as its sidecar writes it in By=.
	By string
}

var _ Authenticator = XFCCAuthenticator{}

// Caller implements Authenticator.
func (a XFCCAuthenticator) Caller(ctx context.Context) (mesh.Identity, bool) {
	vals := metadata.ValueFromIncomingContext(ctx, mesh.XFCCHeader)
	if len(vals) != 1 {
		return mesh.Identity{}, false
	}
	by, uri, ok := mesh.LastXFCCElement(vals[0])
	if !ok || by != a.By {
		return mesh.Identity{}, false
	}
	return mesh.ParseSPIFFE(uri)
}

// PeerCertAuthenticator reads the caller from the client certificate of the
// mTLS connection this process terminated itself (CertReloader): its one URI
// SAN, which must be an Istio SPIFFE ID. The chain was verified against the
// mesh's roots during the handshake; a connection without a verified client
// certificate is unauthenticated.
type PeerCertAuthenticator struct{}

var _ Authenticator = PeerCertAuthenticator{}

// Caller implements Authenticator.
func (PeerCertAuthenticator) Caller(ctx context.Context) (mesh.Identity, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return mesh.Identity{}, false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.PeerCertificates) == 0 {
		return mesh.Identity{}, false
	}
	leaf := info.State.PeerCertificates[0]
	if len(leaf.URIs) != 1 {
		return mesh.Identity{}, false
	}
	return mesh.IdentityFromURL(leaf.URIs[0])
}
