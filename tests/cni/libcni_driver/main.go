// Command libcni-driver drives a CNI plugin through libcni, the library container runtimes
// (containerd's go-cni, CRI-O) use: the same exec, environment, prevResult caching and result
// parsing. Built offline from Debian's golang-github-appc-cni-dev by tests/cni/test_libcni.py.
//
// Usage: libcni-driver validate|add|check|del CONFLIST PLUGIN_DIR CACHE_DIR ID NETNS IFNAME
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/containernetworking/cni/libcni"
)

func main() {
	if len(os.Args) != 8 {
		fail(fmt.Errorf("usage: %s validate|add|check|del CONFLIST PLUGIN_DIR CACHE_DIR ID NETNS IFNAME", os.Args[0]))
	}
	action, confPath, pluginDir, cacheDir := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	list, err := libcni.ConfListFromFile(confPath)
	if err != nil {
		fail(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, cacheDir, nil)
	rt := &libcni.RuntimeConf{ContainerID: os.Args[5], NetNS: os.Args[6], IfName: os.Args[7]}
	if err := run(context.Background(), cni, list, rt, action); err != nil {
		fail(err)
	}
}

func run(ctx context.Context, cni *libcni.CNIConfig, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf, action string) error {
	switch action {
	case "validate":
		caps, err := cni.ValidateNetworkList(ctx, list)
		if err == nil {
			err = json.NewEncoder(os.Stdout).Encode(caps)
		}
		return err
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err == nil {
			err = result.Print() // re-encoded by libcni's typed result: proves it parsed
		}
		return err
	case "check":
		return cni.CheckNetworkList(ctx, list, rt)
	case "del":
		return cni.DelNetworkList(ctx, list, rt)
	}
	return fmt.Errorf("unknown action %q", action)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
