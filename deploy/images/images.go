// Package images builds inflight's container images without Docker: each
// binary (cmd/extproc, cmd/controller) is compiled static (CGO_ENABLED=0,
// -trimpath, no build id, no VCS stamp) and put alone into one layer of an
// OCI image, written as an OCI image layout (index.json, blobs/) that any
// OCI tool can push (crane push, skopeo copy oci:…, oras). It uses
// go-containerregistry, a library made for building and moving images.
//
// The build is reproducible: the same source, Go toolchain and options give
// the same image digest. Every timestamp is SourceDateEpoch, the tar
// entries are written in a fixed order with fixed owners and modes, the
// layer is gzip-compressed by a deterministic encoder, and JSON documents
// are emitted with sorted keys.
//
// An image holds one file, /<binary> (mode 0555, owned by root), and runs
// it as the numeric user 65532:65532 (the non-root user deploy/ also sets):
// no shell, no package manager, no libc, no CA bundle (neither binary makes
// TLS connections outside the cluster's own CA: the controller reads the
// ServiceAccount's ca.crt).
//
// Concurrency: Build runs one go build at a time; Options is read-only.
package images

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// User is the numeric user and group the images run as.
const User = "65532:65532"

// Binaries are the images built: each is cmd/<name>, image inflight-<name>.
var Binaries = []string{"extproc", "controller"}

// OCI annotation and label keys.
const (
	LabelSource   = "org.opencontainers.image.source"
	LabelRevision = "org.opencontainers.image.revision"
	LabelLicenses = "org.opencontainers.image.licenses"
	LabelVersion  = "org.opencontainers.image.version"
	LabelTitle    = "org.opencontainers.image.title"
	LabelCreated  = "org.opencontainers.image.created"
	refName       = "org.opencontainers.image.ref.name"
)

// Options are the flags of a build.
type Options struct {
	// Repo is the repository root (holding go.mod and cmd/).
	Repo string
	// Out is the folder the layouts are written to: Out/inflight-<name>.
	Out string
	// Platforms are os/arch pairs; linux only (the binaries are static).
	Platforms []string
	// Version is the image version label and the layout's ref name.
	Version string
	// Source and Revision are the OCI source and revision labels.
	Source, Revision string
	// Licenses is the SPDX expression of the licence label.
	Licenses string
	// SourceDateEpoch (Unix seconds) is every timestamp in the image.
	SourceDateEpoch int64
	// Go is the go command.
	Go string
}

// DefaultOptions builds for the host's architecture, stamped with the
// time 0 unless SOURCE_DATE_EPOCH is set.
func DefaultOptions() Options {
	return Options{
		Repo:      ".",
		Out:       filepath.Join("out", "images"),
		Platforms: []string{"linux/" + runtime.GOARCH},
		Version:   "0.1.0",
		Source:    "https://github.com/inflight-dev/inflight",
		Revision:  "unknown",
		Licenses:  "NOASSERTION",
		Go:        "go",
	}
}

// AddFlags registers the options on fs.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Repo, "repo", o.Repo, "repository root (holding go.mod and cmd/)")
	fs.StringVar(&o.Out, "out", o.Out, "folder for the OCI image layouts (one sub-folder per image)")
	fs.Func("platforms", "comma-separated os/arch list, linux only (default linux/"+runtime.GOARCH+")", func(s string) error {
		o.Platforms = strings.Split(s, ",")
		return nil
	})
	fs.StringVar(&o.Version, "version", o.Version, "image version (label "+LabelVersion+" and the layout's ref name)")
	fs.StringVar(&o.Source, "source", o.Source, "label "+LabelSource)
	fs.StringVar(&o.Revision, "revision", o.Revision, "label "+LabelRevision+" (the git commit)")
	fs.StringVar(&o.Licenses, "licenses", o.Licenses, "label "+LabelLicenses+" (SPDX expression)")
	fs.Int64Var(&o.SourceDateEpoch, "source-date-epoch", o.SourceDateEpoch, "every timestamp in the image, Unix seconds (SOURCE_DATE_EPOCH)")
	fs.StringVar(&o.Go, "go", o.Go, "the go command")
}

var (
	platformRE = regexp.MustCompile(`^linux/(amd64|arm64|arm|386|ppc64le|s390x|riscv64)$`)
	versionRE  = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// Validate reports every invalid option.
func (o Options) Validate() error {
	var errs []error
	if o.Repo == "" {
		errs = append(errs, errors.New("--repo is empty: want the repository root"))
	} else if _, err := os.Stat(filepath.Join(o.Repo, "go.mod")); err != nil {
		errs = append(errs, fmt.Errorf("--repo=%q: no go.mod there", o.Repo))
	}
	if o.Out == "" {
		errs = append(errs, errors.New("--out is empty: want a folder for the layouts"))
	}
	if len(o.Platforms) == 0 {
		errs = append(errs, errors.New("--platforms is empty: want e.g. linux/amd64"))
	}
	for _, p := range o.Platforms {
		if !platformRE.MatchString(p) {
			errs = append(errs, fmt.Errorf("--platforms: %q: want linux/ARCH with ARCH one of amd64, arm64, arm, 386, ppc64le, s390x, riscv64", p))
		}
	}
	if !versionRE.MatchString(o.Version) {
		errs = append(errs, fmt.Errorf("--version=%q: want a valid image tag ([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})", o.Version))
	}
	if o.SourceDateEpoch < 0 || o.SourceDateEpoch > 1<<33 {
		errs = append(errs, fmt.Errorf("--source-date-epoch=%d: want 0 to %d", o.SourceDateEpoch, int64(1)<<33))
	}
	for name, v := range map[string]string{"--source": o.Source, "--revision": o.Revision, "--licenses": o.Licenses, "--go": o.Go} {
		if v == "" {
			errs = append(errs, fmt.Errorf("%s is empty", name))
		}
	}
	return errors.Join(errs...)
}

// Result is one built image.
type Result struct {
	// Name is the image name, inflight-<binary>.
	Name string
	// Layout is the OCI image layout's folder.
	Layout string
	// Digest is the image index's digest: what manifests reference.
	Digest v1.Hash
	// Sizes are the compressed layer sizes per platform, in bytes.
	Sizes map[string]int64
}

// Build compiles every binary for every platform and writes one OCI image
// layout per binary; an existing layout folder is replaced.
func Build(ctx context.Context, o Options) ([]Result, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "inflight-images-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	var results []Result
	for _, bin := range Binaries {
		r := Result{Name: "inflight-" + bin, Layout: filepath.Join(o.Out, "inflight-"+bin), Sizes: map[string]int64{}}
		idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
		for _, p := range o.Platforms {
			arch := strings.TrimPrefix(p, "linux/")
			exe := filepath.Join(tmp, arch, bin)
			if err := compile(ctx, o, bin, arch, exe); err != nil {
				return nil, err
			}
			img, size, err := Image(o, bin, arch, exe)
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", r.Name, p, err)
			}
			r.Sizes[p] = size
			idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
				Add:        img,
				Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}},
			})
		}
		if r.Digest, err = idx.Digest(); err != nil {
			return nil, err
		}
		if err := os.RemoveAll(r.Layout); err != nil {
			return nil, err
		}
		lp, err := layout.Write(r.Layout, empty.Index)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.Layout, err)
		}
		if err := lp.AppendIndex(idx, layout.WithAnnotations(map[string]string{refName: o.Version})); err != nil {
			return nil, fmt.Errorf("%s: %w", r.Layout, err)
		}
		results = append(results, r)
	}
	return results, nil
}

// compile builds cmd/<bin> as a static linux binary, reproducibly.
func compile(ctx context.Context, o Options, bin, arch, out string) error {
	cmd := exec.CommandContext(ctx, o.Go, "build", "-trimpath", "-buildvcs=false",
		"-ldflags=-s -w -buildid=", "-o", out, "./cmd/"+bin)
	cmd.Dir = o.Repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch, "GOFLAGS=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build ./cmd/%s for linux/%s: %w\n%s", bin, arch, err, stderr.String())
	}
	return nil
}

// Image makes the single-layer image of one binary for linux/arch from the
// executable exe, and returns it with its compressed layer size.
func Image(o Options, bin, arch, exe string) (v1.Image, int64, error) {
	epoch := time.Unix(o.SourceDateEpoch, 0).UTC()
	data, err := os.ReadFile(exe)
	if err != nil {
		return nil, 0, err
	}
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	// One entry: the binary at the root. Fixed owner, mode and times, no
	// user or group names, so nothing of the build machine leaks in.
	if err := tw.WriteHeader(&tar.Header{
		Typeflag: tar.TypeReg, Name: bin, Size: int64(len(data)), Mode: 0o555,
		ModTime: epoch, Format: tar.FormatPAX,
	}); err != nil {
		return nil, 0, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, 0, err
	}
	if err := tw.Close(); err != nil {
		return nil, 0, err
	}
	raw := tb.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, 0, err
	}
	size, err := layer.Size()
	if err != nil {
		return nil, 0, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{
		Created: v1.Time{Time: epoch}, CreatedBy: "inflight images: go build ./cmd/" + bin, Comment: "static, CGO_ENABLED=0, -trimpath",
	}})
	if err != nil {
		return nil, 0, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, 0, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Created = v1.Time{Time: epoch}
	cf.Config = v1.Config{
		User:       User,
		Entrypoint: []string{"/" + bin},
		WorkingDir: "/",
		Labels:     Labels(o, bin, epoch),
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, 0, err
	}
	return img, size, nil
}

// Labels are the OCI labels of an image.
func Labels(o Options, bin string, epoch time.Time) map[string]string {
	return map[string]string{
		LabelSource:   o.Source,
		LabelRevision: o.Revision,
		LabelLicenses: o.Licenses,
		LabelVersion:  o.Version,
		LabelTitle:    "inflight-" + bin,
		LabelCreated:  epoch.Format(time.RFC3339),
	}
}

// Pin writes the built digests into the install manifests: the images of
// deploy/kustomization.yaml (newTag and digest) and of the Helm chart's
// values.yaml (images.<binary>.tag and .digest), with the version as the
// tag. Run it when the layouts are pushed: a manifest must name an image
// that exists.
func Pin(repo, version string, results []Result) error {
	kust := filepath.Join(repo, "deploy", "kustomization.yaml")
	vals := filepath.Join(repo, "deploy", "helm", "inflight", "values.yaml")
	for _, f := range []string{kust, vals} {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		s := string(b)
		for _, r := range results {
			bin := strings.TrimPrefix(r.Name, "inflight-")
			var block *regexp.Regexp
			var repl string
			if f == kust {
				// "  - name: …/inflight-extproc", "    newTag: …", optionally "    digest: …"
				block = regexp.MustCompile(`(?m)^(\s*- name: \S+/` + regexp.QuoteMeta(r.Name) + `\n)(\s+)newTag: \S+(\n\s+digest: \S+)?$`)
				repl = "${1}${2}newTag: " + quoteYAML(version) + "\n${2}digest: " + quoteYAML(r.Digest.String())
			} else {
				// "  extproc:", "    repository: …", "    tag: …", "    digest: …"
				block = regexp.MustCompile(`(?m)^(  ` + regexp.QuoteMeta(bin) + `:\n\s+repository: \S+\n\s+tag: )\S+(\n\s+digest: )\S*$`)
				repl = "${1}" + quoteYAML(version) + "${2}" + quoteYAML(r.Digest.String())
			}
			if !block.MatchString(s) {
				return fmt.Errorf("%s: no image entry for %s to pin", f, r.Name)
			}
			s = block.ReplaceAllString(s, repl)
		}
		if err := os.WriteFile(f, []byte(s), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func quoteYAML(s string) string { return `"` + s + `"` }
