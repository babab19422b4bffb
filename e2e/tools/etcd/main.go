// Command etcd is a minimal wrapper around etcdmain so that etcd can be built
// from the Go module proxy (go install refuses etcd's relative replaces).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
