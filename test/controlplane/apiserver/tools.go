//go:build tools

// Package apiserver only pins the kube-apiserver program for ../build.sh.
package apiserver

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
