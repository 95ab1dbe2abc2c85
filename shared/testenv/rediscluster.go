package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisCluster starts a three-master Redis Cluster on free loopback ports
// for one test and returns its addresses; it is stopped when t ends.
func RedisCluster(t testing.TB) []string {
	t.Helper()
	dir := t.TempDir()
	var addrs []string
	for i := range 3 {
		// The cluster bus gets a claimed port of its own: Redis's default,
		// port+10000, may be any process's ephemeral port.
		port, bus := FreePort(t), FreePort(t)
		node := filepath.Join(dir, strconv.Itoa(i))
		if err := os.MkdirAll(node, 0o700); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--cluster-port", strconv.Itoa(bus), "--bind", "127.0.0.1",
			"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no",
			"--dir", node, "--logfile", filepath.Join(node, "redis.log"))
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // gone with a test binary that dies without its cleanups
		if err := cmd.Start(); err != nil {
			t.Fatalf("testenv: redis cluster node: %v", err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		addr := "127.0.0.1:" + strconv.Itoa(port)
		if err := waitRedis(addr); err != nil {
			log, _ := os.ReadFile(filepath.Join(node, "redis.log"))
			t.Fatalf("%v; its log:\n%s", err, log)
		}
		addrs = append(addrs, addr)
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("testenv: redis-cli --cluster create: %v\n%s", err, out)
	}
	// Every node must agree before the cluster is used: one node can say
	// ok while another still learns the slot map.
	deadline := time.Now().Add(30 * time.Second)
	for _, addr := range addrs {
		c := redis.NewClient(&redis.Options{Addr: addr})
		for {
			info, err := c.ClusterInfo(context.Background()).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") && strings.Contains(info, "cluster_known_nodes:3") &&
				strings.Contains(info, "cluster_slots_ok:16384") {
				break
			}
			if time.Now().After(deadline) {
				c.Close()
				t.Fatalf("testenv: cluster node %s not ready: %v %s", addr, err, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
		c.Close()
	}
	return addrs
}

func waitRedis(addr string) error {
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			return fmt.Errorf("testenv: redis at %s did not answer", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}
