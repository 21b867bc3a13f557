#!/usr/bin/env bash
# Acceptance tests of the test control plane: starts it with a fresh state
# directory (e2e/scripts/controlplane.sh), checks it with kubectl, always
# stops it, and ends with a line "N passed, M failed".
#   KEEP=1 ./test.sh   keeps the state directory for inspection
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CPSH="$HERE/../scripts/controlplane.sh"
export CONTROLPLANE_STATE_DIR=${CONTROLPLANE_STATE_DIR:-$(mktemp -d /tmp/mongoferry-cp-test.XXXXXX)}
# Test-only image "mongoferry/testbox": busybox and kubectl, user root
# (e2e/scripts/build-testbox.sh, cached).
TESTBOX=$("$HERE/../scripts/build-testbox.sh") || { echo "0 passed, 1 failed"; exit 1; }
export CONTROLPLANE_IMAGES="mongoferry/testbox=$TESTBOX"
export KUBECONFIG="$CONTROLPLANE_STATE_DIR/kubeconfig"
WORK=$(mktemp -d /tmp/mongoferry-cp-work.XXXXXX)
PASSED=0; FAILED=0

cleanup() {
  "$CPSH" down >/dev/null 2>&1 || true
  [[ "${KEEP:-0}" == 1 ]] && echo "state kept in $CONTROLPLANE_STATE_DIR" || rm -rf "$CONTROLPLANE_STATE_DIR"
  rm -rf "$WORK"
}
trap cleanup EXIT

# check NAME FUNCTION: runs a test function, counts and reports it.
check() {
  local name=$1; shift
  local start=$SECONDS
  # A plain statement, not `if`/`||`: bash ignores set -e in a subshell
  # whose status is tested. (This script itself does not use set -e.)
  ( set -e; "$@" ) >"$WORK/out" 2>&1
  local rc=$?
  if [[ $rc == 0 ]]; then
    PASSED=$((PASSED + 1)); echo "ok   $name ($((SECONDS - start))s)"
  else
    FAILED=$((FAILED + 1)); echo "FAIL $name ($((SECONDS - start))s)"; sed 's/^/     | /' "$WORK/out" | tail -n 25
  fi
}

fail() { echo "$*"; return 1; }

# until_true SECONDS CMD...: retries CMD every 0.25 s.
until_true() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    (( SECONDS < deadline )) || { echo "timed out: $*"; return 1; }
    sleep 0.25
  done
}

jp() { kubectl get "$@" 2>/dev/null; }

# ---------------------------------------------------------------- 1
t_ready() {
  [[ "$(kubectl get --raw /readyz)" == ok ]] || fail "readyz not ok"
  kubectl version | tee /dev/stderr | grep -q 'Server Version: v1.33' || fail "server version"
  kubectl get node mongoferry-test-node -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -q True
}

# ---------------------------------------------------------------- 2
t_rbac() {
  kubectl create namespace t-rbac
  kubectl -n t-rbac create serviceaccount reader
  local token server ca
  token=$(kubectl -n t-rbac create token reader)
  server=$(cat "$CONTROLPLANE_STATE_DIR/ready")
  ca="$CONTROLPLANE_STATE_DIR/pki/ca.crt"
  as_sa() { kubectl --kubeconfig=/dev/null --server="$server" --certificate-authority="$ca" --token="$token" "$@"; }
  if as_sa -n t-rbac get pods >"$WORK/rbac" 2>&1; then fail "listing pods without a Role should be forbidden"; fi
  cat "$WORK/rbac"
  grep -q 'Forbidden\|forbidden' "$WORK/rbac" || fail "expected 403 Forbidden"
  grep -q 'system:serviceaccount:t-rbac:reader' "$WORK/rbac" || fail "expected the ServiceAccount identity"
  kubectl -n t-rbac create role pod-reader --verb=get,list,watch --resource=pods
  kubectl -n t-rbac create rolebinding reader-pods --role=pod-reader --serviceaccount=t-rbac:reader
  until_true 10 as_sa -n t-rbac get pods
  if as_sa -n default get pods >/dev/null 2>&1; then fail "other namespace should stay forbidden"; fi
}

# ---------------------------------------------------------------- 3
t_gc() {
  kubectl create namespace t-gc
  kubectl -n t-gc create configmap owner --from-literal=a=b
  local uid; uid=$(kubectl -n t-gc get configmap owner -o jsonpath='{.metadata.uid}')
  kubectl -n t-gc apply -f - <<YAML
apiVersion: v1
kind: ConfigMap
metadata:
  name: dependent
  ownerReferences:
  - {apiVersion: v1, kind: ConfigMap, name: owner, uid: "$uid"}
data: {x: "1"}
YAML
  kubectl -n t-gc delete configmap owner --wait=false
  until_true 10 bash -c '! kubectl -n t-gc get configmap dependent'
}

# ---------------------------------------------------------------- 4
t_crd() {
  kubectl apply -f - <<'YAML'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.test.mongoferry.io}
spec:
  group: test.mongoferry.io
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: "self.replicas <= self.maxReplicas"
              message: "replicas must not exceed maxReplicas"
            properties:
              replicas: {type: integer}
              maxReplicas: {type: integer}
          status:
            type: object
            properties:
              conditions:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [type]
                items:
                  type: object
                  required: [type, status]
                  properties:
                    type: {type: string}
                    status: {type: string}
                    reason: {type: string}
                    message: {type: string}
                    lastTransitionTime: {type: string, format: date-time}
YAML
  kubectl wait --for=condition=Established crd/widgets.test.mongoferry.io --timeout=30s
  kubectl create namespace t-crd
  if kubectl -n t-crd apply --server-side -f - >"$WORK/cel" 2>&1 <<'YAML'
apiVersion: test.mongoferry.io/v1
kind: Widget
metadata: {name: bad}
spec: {replicas: 5, maxReplicas: 3}
YAML
  then fail "violating object was accepted"; fi
  cat "$WORK/cel"; grep -q 'replicas must not exceed maxReplicas' "$WORK/cel"
  kubectl -n t-crd apply --server-side -f - <<'YAML'
apiVersion: test.mongoferry.io/v1
kind: Widget
metadata: {name: good}
spec: {replicas: 2, maxReplicas: 3}
YAML
  if kubectl -n t-crd wait --for=condition=Ready widget/good --timeout=1s 2>/dev/null; then fail "Ready before status"; fi
  kubectl -n t-crd patch widget good --subresource=status --type=merge \
    -p '{"status":{"conditions":[{"type":"Ready","status":"True","reason":"Test","message":"set by test","lastTransitionTime":"2025-01-01T00:00:00Z"}]}}'
  kubectl -n t-crd wait --for=condition=Ready widget/good --timeout=10s
  # Server-side apply of status by a second field manager.
  kubectl -n t-crd apply --server-side --subresource=status --field-manager=other -f - <<'YAML'
apiVersion: test.mongoferry.io/v1
kind: Widget
metadata: {name: good}
status:
  conditions:
  - {type: Synced, status: "True", reason: Test, message: ssa, lastTransitionTime: "2025-01-01T00:00:00Z"}
YAML
  kubectl -n t-crd wait --for=condition=Synced widget/good --timeout=10s
}

# ---------------------------------------------------------------- 5
pod_yaml() { # NAME RESTART_POLICY SCRIPT [IMAGE]
  cat <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  restartPolicy: $2
  terminationGracePeriodSeconds: 5
  containers:
  - name: main
    image: ${4:-ghcr.io/mongoferry/testbox:0.1}
    command: [sh, -c]
    args: ['$3']
    env:
    - {name: GREETING, value: hello}
    - {name: DERIVED, value: "\$(GREETING)-world"}
    - name: SECRET
      valueFrom: {secretKeyRef: {name: creds, key: password}}
    - name: POD_IP
      valueFrom: {fieldRef: {fieldPath: status.podIP}}
    - name: MY_NS
      valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
    volumeMounts:
    - {name: conf, mountPath: /etc/conf}
    - {name: scratch, mountPath: /scratch}
  volumes:
  - name: conf
    configMap: {name: conf}
  - name: scratch
    emptyDir: {}
YAML
}

phase() { kubectl -n t-pods get pod "$1" -o jsonpath='{.status.phase}'; }

t_pod_exit() {
  kubectl create namespace t-pods
  kubectl -n t-pods create secret generic creds --from-literal=password=s3cret
  kubectl -n t-pods create configmap conf --from-literal=setting=on
  local first
  first=$(pod_yaml exit3 Never 'sleep 1; echo "G=$GREETING D=$DERIVED S=$SECRET IP=$POD_IP NS=$MY_NS"; cat /etc/conf/setting; echo; exit 3' \
    | kubectl -n t-pods create -f - -o jsonpath='{.status.phase}')
  [[ "$first" == Pending ]] || fail "initial phase $first"
  kubectl -n t-pods wait --for=jsonpath='{.status.phase}'=Running pod/exit3 --timeout=30s
  kubectl -n t-pods wait --for=jsonpath='{.status.phase}'=Failed pod/exit3 --timeout=30s
  local code ip log
  code=$(kubectl -n t-pods get pod exit3 -o jsonpath='{.status.containerStatuses[0].state.terminated.exitCode}')
  [[ "$code" == 3 ]] || fail "exit code $code"
  ip=$(kubectl -n t-pods get pod exit3 -o jsonpath='{.status.podIP}')
  [[ "$ip" == 127.* && "$ip" != 127.0.0.1 ]] || fail "podIP $ip"
  log=$(kubectl -n t-pods logs exit3)
  echo "$log"
  grep -q "G=hello D=hello-world S=s3cret IP=$ip NS=t-pods" <<<"$log" || fail "env not resolved"
  grep -q '^on$' <<<"$log" || fail "configMap volume not mounted"
  pod_yaml ok Never 'echo fine' | kubectl -n t-pods create -f -
  kubectl -n t-pods wait --for=jsonpath='{.status.phase}'=Succeeded pod/ok --timeout=30s
  [[ "$(kubectl -n t-pods get pod ok -o jsonpath='{.status.containerStatuses[0].state.terminated.reason}')" == Completed ]]
}

t_pod_restart() {
  pod_yaml crashy Always 'echo "run at $(date +%s%N)"; exit 1' | kubectl -n t-pods create -f -
  until_true 30 bash -c '(( $(kubectl -n t-pods get pod crashy -o jsonpath="{.status.containerStatuses[0].restartCount}") >= 2 ))'
  [[ "$(phase crashy)" == Running ]] || fail "phase $(phase crashy)"
  kubectl -n t-pods get pod crashy -o jsonpath='{.status.containerStatuses[0].lastState.terminated.exitCode}' | grep -qx 1
  kubectl -n t-pods logs crashy --previous | grep -q '^run at'
  pod_yaml onfail OnFailure 'if [ -e /scratch/second ]; then echo second; exit 0; fi; touch /scratch/second; exit 7' \
    | kubectl -n t-pods create -f -
  kubectl -n t-pods wait --for=jsonpath='{.status.phase}'=Succeeded pod/onfail --timeout=30s
  kubectl -n t-pods get pod onfail -o jsonpath='{.status.containerStatuses[0].restartCount}' | grep -qx 1
}

t_pod_same_port() {
  for n in web1 web2; do
    kubectl -n t-pods apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $n}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: mongoferry/testbox:dev
    command: [sh, -c, 'mkdir -p /www && echo "i am \$(MY_NAME)" > /www/index.html; exec httpd -f -p "\$POD_IP:8080" -h /www']
    env:
    - name: POD_IP
      valueFrom: {fieldRef: {fieldPath: status.podIP}}
    - name: MY_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    ports: [{name: http, containerPort: 8080}]
    readinessProbe:
      httpGet: {path: /index.html, port: http}
      periodSeconds: 1
YAML
  done
  kubectl -n t-pods wait --for=condition=Ready pod/web1 pod/web2 --timeout=30s
  local ip1 ip2
  ip1=$(kubectl -n t-pods get pod web1 -o jsonpath='{.status.podIP}')
  ip2=$(kubectl -n t-pods get pod web2 -o jsonpath='{.status.podIP}')
  [[ "$ip1" != "$ip2" ]] || fail "same pod IP $ip1"
  curl -sf "http://$ip1:8080/index.html" | grep -q 'i am web1'
  curl -sf "http://$ip2:8080/index.html" | grep -q 'i am web2'
  # Deletion: SIGTERM, process gone, pod object removed.
  kubectl -n t-pods delete pod web1 --timeout=20s
  if curl -sf "http://$ip1:8080/" >/dev/null; then fail "web1 still serving after delete"; fi
  curl -sf "http://$ip2:8080/index.html" | grep -q 'i am web2'
}

t_pod_unknown_image() {
  kubectl -n t-pods run stranger --image=docker.io/library/nginx:1.27 --restart=Never
  until_true 15 bash -c '[[ $(kubectl -n t-pods get pod stranger -o jsonpath="{.status.containerStatuses[0].state.waiting.reason}") == ErrImageNeverPull ]]'
  sleep 2
  [[ "$(phase stranger)" == Pending ]] || fail "phase $(phase stranger)"
  kubectl -n t-pods get pod stranger -o jsonpath='{.status.containerStatuses[0].state.waiting.message}' | tee /dev/stderr | grep -q 'pod runner only runs'
  kubectl -n t-pods delete pod stranger --timeout=20s
}

t_pod_serviceaccount() {
  # The pod authenticates as its ServiceAccount through $KUBECONFIG.
  kubectl -n t-pods create serviceaccount lister
  kubectl -n t-pods create role pod-lister --verb=list --resource=pods
  kubectl -n t-pods create rolebinding lister --role=pod-lister --serviceaccount=t-pods:lister
  kubectl -n t-pods apply -f - <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: sa}
spec:
  serviceAccountName: lister
  restartPolicy: Never
  containers:
  - name: main
    image: mongoferry/testbox
    command: [sh, -c, 'kubectl get pods -o name && ! kubectl get secrets 2>&1; kubectl auth whoami -o jsonpath="{.status.userInfo.username}"']
YAML
  kubectl -n t-pods wait --for=jsonpath='{.status.phase}'=Succeeded pod/sa --timeout=30s
  local log; log=$(kubectl -n t-pods logs sa); echo "$log"
  grep -q 'pod/sa' <<<"$log" || fail "list pods as SA"
  grep -q 'forbidden' <<<"$log" || fail "secrets should be forbidden"
  grep -q 'system:serviceaccount:t-pods:lister' <<<"$log" || fail "identity"
}

t_gc_pods() {
  # Deleting an owner cascades to pods it owns (ReplicaSet-less check).
  kubectl -n t-pods create configmap pod-owner --from-literal=a=b
  local uid; uid=$(kubectl -n t-pods get configmap pod-owner -o jsonpath='{.metadata.uid}')
  kubectl -n t-pods apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: owned
  ownerReferences: [{apiVersion: v1, kind: ConfigMap, name: pod-owner, uid: "$uid"}]
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: main, image: mongoferry/testbox, command: [sh, -c, 'sleep 300']}
YAML
  kubectl -n t-pods wait --for=condition=Ready pod/owned --timeout=30s
  kubectl -n t-pods delete configmap pod-owner
  until_true 20 bash -c '! kubectl -n t-pods get pod owned'
}

t_pod_security() {
  # The image's root filesystem, the user, a read-only root and dropped
  # capabilities are enforced by runc; Secrets are mounted at their
  # mountPath, group-readable through fsGroup.
  kubectl -n t-pods create secret generic token --from-literal=token=t0k3n
  kubectl -n t-pods apply -f - <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: locked}
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532}
  containers:
  - name: main
    image: mongoferry/testbox
    command: [sh, -c]
    args:
    - |
      echo "id=$(id -u):$(id -g) groups=$(id -G)"
      echo "hostname=$(hostname)"
      if touch /probe 2>/dev/null; then echo "root writable"; else echo "root read-only"; fi
      echo "cap=$(grep CapBnd /proc/self/status | tr -d '\t')"
      echo "token=$(cat /etc/token/token)"
      ls /usr/lib/google-cloud-sdk >/dev/null 2>&1 && echo "host filesystem visible" || echo "image filesystem"
      touch /tmp-vol/ok && echo "emptyDir writable"
    securityContext:
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
    volumeMounts:
    - {name: token, mountPath: /etc/token, readOnly: true}
    - {name: tmp, mountPath: /tmp-vol}
  volumes:
  - name: token
    secret: {secretName: token, defaultMode: 0400}
  - name: tmp
    emptyDir: {}
YAML
  kubectl -n t-pods wait --for=jsonpath='{.status.phase}'=Succeeded pod/locked --timeout=30s
  local log; log=$(kubectl -n t-pods logs locked); echo "$log"
  grep -q '^id=65532:65532 groups=65532' <<<"$log" || fail "user"
  grep -q '^hostname=locked$' <<<"$log" || fail "hostname"
  grep -q '^root read-only$' <<<"$log" || fail "readOnlyRootFilesystem not enforced"
  grep -q '^cap=CapBnd:0000000000000000$' <<<"$log" || fail "capabilities not dropped"
  grep -q '^token=t0k3n$' <<<"$log" || fail "secret (0400 + fsGroup) not readable at its mountPath"
  grep -q '^image filesystem$' <<<"$log" || fail "root filesystem is not the image's"
  grep -q '^emptyDir writable$' <<<"$log" || fail "emptyDir"
}

t_pod_run_as_non_root() {
  # testbox's image user is root: runAsNonRoot refuses it as the kubelet does.
  kubectl -n t-pods apply -f - <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: rootimage}
spec:
  securityContext: {runAsNonRoot: true}
  containers:
  - {name: main, image: mongoferry/testbox, command: [sh, -c, 'echo should not run']}
YAML
  until_true 20 bash -c '[[ $(kubectl -n t-pods get pod rootimage -o jsonpath="{.status.containerStatuses[0].state.waiting.reason}") == CreateContainerConfigError ]]'
  kubectl -n t-pods get pod rootimage -o jsonpath='{.status.containerStatuses[0].state.waiting.message}' | tee /dev/stderr | grep -q 'runAsNonRoot and image will run as root'
  [[ "$(phase rootimage)" == Pending ]] || fail "phase $(phase rootimage)"
  kubectl -n t-pods delete pod rootimage --timeout=20s
}

t_pod_oom() {
  # A container over its memory limit (cgroup v1 memory controller) is
  # OOMKilled and restarted.
  kubectl -n t-pods apply -f - <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: hungry}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: mongoferry/testbox
    command: [sh, -c, 'echo start; x=$(head -c 100000000 /dev/zero | tr "\0" a); echo "survived ${#x}"; sleep 300']
    resources: {limits: {memory: 32Mi}}
YAML
  until_true 40 bash -c '(( $(kubectl -n t-pods get pod hungry -o jsonpath="{.status.containerStatuses[0].restartCount}") >= 1 ))'
  kubectl -n t-pods get pod hungry -o jsonpath='{.status.containerStatuses[0].lastState.terminated}' | tee /dev/stderr | grep -q '"reason":"OOMKilled"'
  kubectl -n t-pods get pod hungry -o jsonpath='{.status.containerStatuses[0].lastState.terminated.exitCode}' | grep -qx 137
  if kubectl -n t-pods logs hungry --previous | grep -q survived; then fail "the limit was not enforced"; fi
  kubectl -n t-pods delete pod hungry --timeout=20s
}

t_pod_exec() {
  kubectl -n t-pods apply -f - <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: shell}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: main, image: mongoferry/testbox, command: [sh, -c, 'echo hi > /greeting; sleep 300']}
YAML
  kubectl -n t-pods wait --for=condition=Ready pod/shell --timeout=30s
  until_true 10 kubectl -n t-pods exec shell -- cat /greeting
  [[ "$(kubectl -n t-pods exec shell -- cat /greeting)" == hi ]] || fail "exec output"
  [[ "$(echo piped | kubectl -n t-pods exec -i shell -- cat)" == piped ]] || fail "exec stdin"
  local rc=0; kubectl -n t-pods exec shell -- sh -c 'exit 4' || rc=$?
  [[ $rc == 4 ]] || fail "exec exit code $rc"
  kubectl -n t-pods delete pod shell --timeout=20s
}

t_go_unit() {
  # Unit tests of the pod runner's pure parts (image store, OCI spec,
  # security context, env, volumes, addresses, logs) and gofmt.
  cd "$HERE"
  local unformatted; unformatted=$(gofmt -l .)
  [[ -z "$unformatted" ]] || fail "gofmt: $unformatted"
  # The compiler flags of controlplane.sh's build, so the k8s.io packages come from its cache
  # (other flags compile them all again: ~14 CPU-min cold).
  nice -n 10 go test -gcflags=all=-dwarf=false ./...
}

check "0 go test ./... (pod runner unit tests) and gofmt" t_go_unit

echo "starting control plane in $CONTROLPLANE_STATE_DIR"
start=$SECONDS
if ! "$CPSH" up; then
  echo "$PASSED passed, $((FAILED + 1)) failed"; exit 1
fi
echo "control plane up in $((SECONDS - start))s"

check "1 readyz and server version" t_ready
check "2 RBAC: 403 without Role, ok with RoleBinding" t_rbac
check "3 garbage collector deletes dependents" t_gc
check "4 CRD with CEL rule, server-side apply, status, wait" t_crd
check "5a pod runs with args/env/secret/fieldRef, exit code" t_pod_exit
check "5b restartPolicy Always / OnFailure restarts" t_pod_restart
check "5c two pods on the same port, readiness, deletion" t_pod_same_port
check "5d unknown image never runs" t_pod_unknown_image
check "5e pod authenticates as its ServiceAccount" t_pod_serviceaccount
check "5f owner deletion cascades to pods" t_gc_pods
check "5g image root fs, user, read-only root, no capabilities, Secret at mountPath" t_pod_security
check "5h runAsNonRoot refuses an image that runs as root" t_pod_run_as_non_root
check "5i memory limit: OOMKilled and restarted" t_pod_oom
check "5j kubectl exec: output, stdin, exit code" t_pod_exec

pid=$(cat "$CONTROLPLANE_STATE_DIR/cpctl.pid" 2>/dev/null || true)
[[ -n "$pid" ]] && awk '/VmRSS|VmHWM/ {printf "control plane %s %d MiB\n", $1, $2/1024}' "/proc/$pid/status"
echo "$PASSED passed, $FAILED failed"
[[ $FAILED == 0 ]]
