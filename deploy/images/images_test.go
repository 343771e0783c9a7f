package images

import (
	"archive/tar"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/inflight-dev/inflight/deploy/deploytest"
	"github.com/inflight-dev/inflight/test/controlplane"
	"github.com/inflight-dev/inflight/test/testutil"
)

func options(t *testing.T, out string) Options {
	t.Helper()
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions()
	o.Repo, o.Out = root, out
	o.Revision = "0123456789abcdef0123456789abcdef01234567"
	o.SourceDateEpoch = 1_700_000_000
	return o
}

// TestBuildReproducibleAndRunnable builds both images twice into separate
// layouts, checks the digests are equal, then opens the first layout as an
// OCI client would: one index, one platform, one layer holding one file,
// the config's user, entrypoint and labels; and runs each binary taken out
// of its layer.
func TestBuildReproducibleAndRunnable(t *testing.T) {
	testutil.SkipUnlessLong(t) // two static builds of both binaries: minutes on a cold cache
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir := t.TempDir()
	a, err := Build(ctx, options(t, filepath.Join(dir, "a")))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Build(ctx, options(t, filepath.Join(dir, "b")))
	if err != nil {
		t.Fatal(err)
	}
	for i := range a {
		t.Logf("%s %s layer %v bytes", a[i].Name, a[i].Digest, a[i].Sizes)
		if a[i].Digest != b[i].Digest {
			t.Errorf("%s: two builds gave %s and %s", a[i].Name, a[i].Digest, b[i].Digest)
		}
	}
	o := options(t, dir)
	for _, r := range a {
		bin := strings.TrimPrefix(r.Name, "inflight-")
		img := openLayout(t, r)
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		c := cf.Config
		if c.User != "65532:65532" || len(c.Entrypoint) != 1 || c.Entrypoint[0] != "/"+bin || len(c.Cmd) != 0 || len(c.Env) != 0 {
			t.Errorf("%s config: user %q entrypoint %q cmd %q env %q: want 65532:65532, [/%s], none, none", r.Name, c.User, c.Entrypoint, c.Cmd, c.Env, bin)
		}
		for k, want := range map[string]string{LabelSource: o.Source, LabelRevision: o.Revision, LabelLicenses: o.Licenses, LabelVersion: o.Version, LabelCreated: "2023-11-14T22:13:20Z"} {
			if got := c.Labels[k]; got != want {
				t.Errorf("%s label %s = %q, want %q", r.Name, k, got, want)
			}
		}
		if cf.OS != "linux" || cf.Architecture != runtime.GOARCH || !cf.Created.Time.Equal(time.Unix(o.SourceDateEpoch, 0)) {
			t.Errorf("%s: os/arch %s/%s created %v", r.Name, cf.OS, cf.Architecture, cf.Created)
		}
		exe := extractOnly(t, img, bin)
		switch bin {
		case "extproc":
			runExtproc(t, exe)
		case "controller":
			runHelp(t, exe, "-lease-name")
		}
	}
}

// openLayout reads the layout's index.json: one index (the digest that
// manifests reference), holding one image for the host's platform.
func openLayout(t *testing.T, r Result) v1.Image {
	t.Helper()
	p, err := layout.FromPath(r.Layout)
	if err != nil {
		t.Fatal(err)
	}
	top, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Digest != r.Digest || im.Manifests[0].Annotations[refName] == "" {
		t.Fatalf("%s index.json: %+v, want one index %s with a ref name", r.Layout, im.Manifests, r.Digest)
	}
	idx, err := top.ImageIndex(r.Digest)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(pm.Manifests) != 1 || pm.Manifests[0].Platform == nil || pm.Manifests[0].Platform.Architecture != runtime.GOARCH {
		t.Fatalf("%s: platform manifests %+v, want one for linux/%s", r.Name, pm.Manifests, runtime.GOARCH)
	}
	img, err := idx.Image(pm.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// extractOnly checks the image has one layer holding exactly one regular
// file, /bin (no shell, nothing else), owned by root, mode 0555, and
// writes it to a temporary executable.
func extractOnly(t *testing.T, img v1.Image, bin string) string {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%d layers (%v), want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	exe := filepath.Join(t.TempDir(), bin)
	n := 0
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
		if h.Name != bin || h.Typeflag != tar.TypeReg || h.Mode != 0o555 || h.Uid != 0 || h.Gid != 0 || h.Uname != "" {
			t.Errorf("layer entry %q type %c mode %o uid %d gid %d uname %q: want only %s, a regular file 0555 owned by 0:0", h.Name, h.Typeflag, h.Mode, h.Uid, h.Gid, h.Uname, bin)
			continue
		}
		f, err := os.OpenFile(exe, os.O_CREATE|os.O_WRONLY, 0o755)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(f, tr); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if n != 1 {
		t.Fatalf("layer has %d entries, want 1", n)
	}
	// Static: no ELF interpreter and no needed shared library (there is no
	// libc in the image).
	f, err := elf.Open(exe)
	if err != nil {
		t.Fatalf("%s: %v", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has an ELF interpreter: it is dynamically linked", bin)
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("%s needs shared libraries %v (%v)", bin, libs, err)
	}
	return exe
}

func runHelp(t *testing.T, exe, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, exe, "-h").CombinedOutput()
	if !strings.Contains(string(out), want) {
		t.Errorf("%s -h does not list %s:\n%s", exe, want, out)
	}
}

// runExtproc starts the extracted extproc on 127.0.0.1, waits for
// /readyz, then stops it with SIGTERM and expects a clean exit.
func runExtproc(t *testing.T, exe string) {
	t.Helper()
	admin := testutil.FreeAddr(t)
	cmd := exec.Command(exe, "--grpc-listen="+testutil.FreeAddr(t), "--admin-listen="+admin, "--drain-timeout=1s")
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	}()
	ready := false
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && !ready; time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get(fmt.Sprintf("http://%s/readyz", admin))
		if err == nil {
			ready = resp.StatusCode == http.StatusOK
			resp.Body.Close()
		}
	}
	if !ready {
		t.Fatalf("extproc from the image never became ready:\n%s", logs.String())
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("extproc exited with %v after SIGTERM:\n%s", err, logs.String())
		}
	case <-time.After(60 * time.Second):
		t.Errorf("extproc did not exit within 60 s of SIGTERM")
	}
}

func TestValidateNamesEveryError(t *testing.T) {
	o := Options{Platforms: []string{"darwin/arm64"}, Version: "a b", SourceDateEpoch: -1}
	err := o.Validate()
	if err == nil {
		t.Fatal("invalid options passed")
	}
	for _, want := range []string{"--repo", "--out", `--platforms: "darwin/arm64"`, `--version="a b"`, "--source-date-epoch=-1", "--source is empty", "--revision is empty", "--licenses is empty", "--go is empty"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

// TestPin pins two digests into a copy of deploy/, twice (the second run
// replaces the first), and checks what kubectl kustomize and the chart's
// values then name.
func TestPin(t *testing.T) {
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	repo := t.TempDir()
	copyTree(t, filepath.Join(root, "deploy"), filepath.Join(repo, "deploy"))
	var results []Result
	for i, name := range []string{"inflight-extproc", "inflight-controller"} {
		results = append(results, Result{Name: name, Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat(fmt.Sprint(i+1), 64)}})
	}
	if err := Pin(repo, "0.0.9", results); err != nil {
		t.Fatal(err)
	}
	results[0].Digest.Hex = strings.Repeat("a", 64)
	if err := Pin(repo, "0.1.0", results); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"extproc":    "ghcr.io/inflight-dev/inflight-extproc:0.1.0@sha256:" + strings.Repeat("a", 64),
		"controller": "ghcr.io/inflight-dev/inflight-controller:0.1.0@sha256:" + strings.Repeat("2", 64),
	}
	for _, o := range deploytest.Kustomize(t, filepath.Join(repo, "deploy")) {
		if o.U.GetKind() != "Deployment" {
			continue
		}
		cs, _, _ := unstructured.NestedSlice(o.U.Object, "spec", "template", "spec", "containers")
		c := cs[0].(map[string]any)
		if got := c["image"]; got != want[c["name"].(string)] {
			t.Errorf("kustomize %s image %v, want %s", o.U.GetName(), got, want[c["name"].(string)])
		}
	}
	b, err := os.ReadFile(filepath.Join(repo, "deploy", "helm", "inflight", "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	type image struct{ Repository, Tag, Digest string }
	var vals struct {
		Images struct{ Extproc, Controller image }
	}
	if err := yaml.Unmarshal(b, &vals); err != nil {
		t.Fatal(err)
	}
	for bin, im := range map[string]image{"extproc": vals.Images.Extproc, "controller": vals.Images.Controller} {
		w := want[bin]
		if got := im.Repository + ":" + im.Tag + "@" + im.Digest; got != w {
			t.Errorf("values.yaml images.%s = %s, want %s", bin, got, w)
		}
	}
	// A file without the entry is an error, not a silent no-op.
	if err := Pin(t.TempDir(), "0.1.0", results); err == nil {
		t.Error("Pin on a tree without deploy/ passed")
	}
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if d.IsDir() {
			if d.Name() == "node_modules" {
				return filepath.SkipDir
			}
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}
