package podrunner

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// envResolver computes a container's environment the way the kubelet does:
// envFrom first, then env in order, with $(VAR) references expanded
// against the variables defined before.
type envResolver struct {
	client kubernetes.Interface
	pod    *corev1.Pod
	podIP  string
	hostIP string
}

// configError marks a problem in the pod's configuration (missing Secret,
// key, ...): the container stays waiting with CreateContainerConfigError.
type configError struct{ msg string }

func (e *configError) Error() string { return e.msg }

func configErrorf(format string, a ...any) error { return &configError{fmt.Sprintf(format, a...)} }

// Resolve returns the variables in definition order (later ones win).
func (r *envResolver) Resolve(ctx context.Context, c *corev1.Container) ([][2]string, error) {
	var out [][2]string
	values := map[string]string{}
	set := func(k, v string) {
		out = append(out, [2]string{k, v})
		values[k] = v
	}
	for _, from := range c.EnvFrom {
		data, err := r.envFromData(ctx, from)
		if err != nil {
			return nil, err
		}
		for k, v := range data {
			set(from.Prefix+k, v)
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			set(e.Name, expand(e.Value, values))
			continue
		}
		v, ok, err := r.valueFrom(ctx, c, e.ValueFrom)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		if ok {
			set(e.Name, v)
		}
	}
	return out, nil
}

func (r *envResolver) envFromData(ctx context.Context, from corev1.EnvFromSource) (map[string]string, error) {
	ns := r.pod.Namespace
	switch {
	case from.SecretRef != nil:
		s, err := r.client.CoreV1().Secrets(ns).Get(ctx, from.SecretRef.Name, metav1.GetOptions{})
		if err != nil {
			return nil, optionalOr(err, from.SecretRef.Optional, "secret %q not found", from.SecretRef.Name)
		}
		data := map[string]string{}
		for k, v := range s.Data {
			data[k] = string(v)
		}
		return data, nil
	case from.ConfigMapRef != nil:
		cm, err := r.client.CoreV1().ConfigMaps(ns).Get(ctx, from.ConfigMapRef.Name, metav1.GetOptions{})
		if err != nil {
			return nil, optionalOr(err, from.ConfigMapRef.Optional, "configmap %q not found", from.ConfigMapRef.Name)
		}
		return cm.Data, nil
	}
	return nil, nil
}

// valueFrom resolves one valueFrom; ok=false means "optional and absent".
func (r *envResolver) valueFrom(ctx context.Context, c *corev1.Container, src *corev1.EnvVarSource) (string, bool, error) {
	ns := r.pod.Namespace
	switch {
	case src.SecretKeyRef != nil:
		ref := src.SecretKeyRef
		s, err := r.client.CoreV1().Secrets(ns).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			return "", false, optionalOr(err, ref.Optional, "secret %q not found", ref.Name)
		}
		v, ok := s.Data[ref.Key]
		if !ok {
			return "", false, optionalOr(nil, ref.Optional, "couldn't find key %s in Secret %s/%s", ref.Key, ns, ref.Name)
		}
		return string(v), true, nil
	case src.ConfigMapKeyRef != nil:
		ref := src.ConfigMapKeyRef
		cm, err := r.client.CoreV1().ConfigMaps(ns).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			return "", false, optionalOr(err, ref.Optional, "configmap %q not found", ref.Name)
		}
		v, ok := cm.Data[ref.Key]
		if !ok {
			return "", false, optionalOr(nil, ref.Optional, "couldn't find key %s in ConfigMap %s/%s", ref.Key, ns, ref.Name)
		}
		return v, true, nil
	case src.FieldRef != nil:
		v, err := r.field(src.FieldRef.FieldPath)
		return v, err == nil, err
	case src.ResourceFieldRef != nil:
		return resourceField(c, src.ResourceFieldRef), true, nil
	}
	return "", false, configErrorf("unsupported valueFrom")
}

// field implements the downward API fields a kubelet supports for env.
func (r *envResolver) field(path string) (string, error) {
	p := r.pod
	switch path {
	case "metadata.name":
		return p.Name, nil
	case "metadata.namespace":
		return p.Namespace, nil
	case "metadata.uid":
		return string(p.UID), nil
	case "spec.nodeName":
		return p.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return p.Spec.ServiceAccountName, nil
	case "status.podIP", "status.podIPs":
		return r.podIP, nil
	case "status.hostIP", "status.hostIPs":
		return r.hostIP, nil
	}
	if k, ok := subscript(path, "metadata.labels"); ok {
		return p.Labels[k], nil
	}
	if k, ok := subscript(path, "metadata.annotations"); ok {
		return p.Annotations[k], nil
	}
	return "", configErrorf("unsupported fieldPath %q", path)
}

// subscript parses `prefix['key']`.
func subscript(path, prefix string) (string, bool) {
	rest, ok := strings.CutPrefix(path, prefix+"['")
	if !ok || !strings.HasSuffix(rest, "']") {
		return "", false
	}
	return strings.TrimSuffix(rest, "']"), true
}

func resourceField(c *corev1.Container, ref *corev1.ResourceFieldSelector) string {
	var q resource.Quantity
	switch ref.Resource {
	case "limits.cpu":
		q = c.Resources.Limits[corev1.ResourceCPU]
	case "limits.memory":
		q = c.Resources.Limits[corev1.ResourceMemory]
	case "requests.cpu":
		q = c.Resources.Requests[corev1.ResourceCPU]
	case "requests.memory":
		q = c.Resources.Requests[corev1.ResourceMemory]
	}
	div := ref.Divisor
	if div.IsZero() {
		div = resource.MustParse("1")
	}
	if q.IsZero() {
		return "0"
	}
	// Round up, as the kubelet does.
	v := (q.MilliValue() + div.MilliValue() - 1) / div.MilliValue()
	return strconv.FormatInt(v, 10)
}

func optionalOr(err error, optional *bool, format string, a ...any) error {
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if optional != nil && *optional {
		return nil
	}
	return configErrorf(format, a...)
}

// expand replaces $(VAR) with the value of VAR when it is defined; $$ is an
// escaped $. Undefined references are left as written (kubelet semantics).
func expand(s string, values map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := values[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}
