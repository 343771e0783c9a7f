//go:build tools

// Package etcd only pins the etcd server program for ../build.sh.
package etcd

import _ "go.etcd.io/etcd/server/v3"
