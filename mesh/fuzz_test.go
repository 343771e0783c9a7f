package mesh

import "testing"

// FuzzResolve feeds arbitrary attribute values: Resolve must never panic, and
// whatever it returns is either a valid target or the zero target with a reason.
func FuzzResolve(f *testing.F) {
	s := sidecar()
	f.Add(s[AttrPod], s[AttrNamespace], s[AttrWorkload], s[AttrNodeID], s[AttrCluster], s[AttrServiceHost])
	f.Add("", "", "", "", "outbound|8000||vllm.models.svc.cluster.local", "")
	f.Add("", "", "", "sidecar~1.2.3.4~p-0.ns~ns.svc.cluster.local", "inbound|1||", "")
	f.Add("x", "y", "", "", "inbound|", "..svc")
	f.Fuzz(func(t *testing.T, pod, ns, workload, nodeID, cluster, host string) {
		m := Map{AttrPod: pod, AttrNamespace: ns, AttrWorkload: workload, AttrNodeID: nodeID, AttrCluster: cluster, AttrServiceHost: host}
		got, reason := Resolve(m)
		if reason != ReasonNone {
			if got != (Target{}) {
				t.Fatalf("reason %q with non-zero target %+v", reason, got)
			}
			return
		}
		if !isDNSLabel(got.Namespace) {
			t.Fatalf("invalid namespace %q accepted", got.Namespace)
		}
		if got.Workload == "" && got.Service == "" {
			t.Fatalf("target with neither workload nor service: %+v", got)
		}
		if got.Workload != "" && !validTarget(got) {
			t.Fatalf("invalid target accepted: %+v", got)
		}
	})
}
