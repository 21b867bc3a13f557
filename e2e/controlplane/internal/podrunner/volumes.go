package podrunner

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// volumeWriter materialises a pod's volumes as directories under
// <podDir>/volumes/<name>/; each container bind-mounts them at their
// mountPath. With a pod fsGroup, files get that group and group read
// access (read and write for emptyDir), as the kubelet does.
type volumeWriter struct {
	env     *envResolver // client, pod and downward-API values
	root    string       // <podDir>/volumes
	fsGroup *int64
}

// volumeDir is a volume's host directory; Secret, ConfigMap, downward API
// and projected volumes are always mounted read-only.
type volumeDir struct {
	path     string
	readOnly bool
}

// file is one file of a volume, relative to the volume's directory.
type file struct {
	path string
	data []byte
	mode os.FileMode
}

// WriteAll (re)writes every volume of the pod and returns the host
// directory of each volume by name.
func (w *volumeWriter) WriteAll(ctx context.Context) (map[string]volumeDir, error) {
	dirs := map[string]volumeDir{}
	for _, v := range w.env.pod.Spec.Volumes {
		if v.HostPath != nil {
			dirs[v.Name] = volumeDir{path: v.HostPath.Path}
			continue
		}
		dir := filepath.Join(w.root, v.Name)
		dirs[v.Name] = volumeDir{path: dir, readOnly: v.EmptyDir == nil}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		if v.EmptyDir != nil {
			// Keeps its content across container restarts.
			if err := w.setOwnership(dir, false); err != nil {
				return nil, err
			}
			continue
		}
		files, err := w.files(ctx, v)
		if err != nil {
			return nil, fmt.Errorf("volume %q: %w", v.Name, err)
		}
		for _, f := range files {
			p := filepath.Join(dir, f.path)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return nil, err
			}
			// Write-then-rename keeps readers from seeing half a file.
			tmp := p + ".tmp"
			if err := os.WriteFile(tmp, f.data, f.mode); err != nil {
				return nil, err
			}
			if err := os.Rename(tmp, p); err != nil {
				return nil, err
			}
		}
		if err := w.setOwnership(dir, true); err != nil {
			return nil, err
		}
	}
	return dirs, nil
}

// setOwnership gives a volume's tree the pod's fsGroup: group ownership,
// group read (and write unless readOnly) access, setgid directories.
func (w *volumeWriter) setOwnership(dir string, readOnly bool) error {
	if w.fsGroup == nil {
		return nil
	}
	gid := int(*w.fsGroup)
	return filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(p, -1, gid); err != nil {
			return err
		}
		if info.Mode()&os.ModeSymlink != 0 {
			return nil
		}
		return os.Chmod(p, fsGroupMode(info.Mode(), info.IsDir(), readOnly))
	})
}

// fsGroupMode adds the fsGroup access bits to a file's mode.
func fsGroupMode(mode os.FileMode, dir, readOnly bool) os.FileMode {
	mask := os.FileMode(0o660)
	if readOnly {
		mask = 0o440
	}
	if dir {
		mask |= os.ModeSetgid | 0o110
	}
	return mode | mask
}

func (w *volumeWriter) files(ctx context.Context, v corev1.Volume) ([]file, error) {
	switch {
	case v.Secret != nil:
		return w.secret(ctx, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional, v.Secret.DefaultMode)
	case v.ConfigMap != nil:
		return w.configMap(ctx, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional, v.ConfigMap.DefaultMode)
	case v.DownwardAPI != nil:
		return w.downward(v.DownwardAPI.Items, v.DownwardAPI.DefaultMode)
	case v.Projected != nil:
		var all []file
		for _, src := range v.Projected.Sources {
			var fs []file
			var err error
			switch {
			case src.Secret != nil:
				fs, err = w.secret(ctx, src.Secret.Name, src.Secret.Items, src.Secret.Optional, v.Projected.DefaultMode)
			case src.ConfigMap != nil:
				fs, err = w.configMap(ctx, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional, v.Projected.DefaultMode)
			case src.DownwardAPI != nil:
				fs, err = w.downward(src.DownwardAPI.Items, v.Projected.DefaultMode)
			case src.ServiceAccountToken != nil:
				fs, err = w.token(ctx, src.ServiceAccountToken, v.Projected.DefaultMode)
			default:
				err = configErrorf("unsupported projected source")
			}
			if err != nil {
				return nil, err
			}
			all = append(all, fs...)
		}
		return all, nil
	}
	return nil, configErrorf("unsupported volume type (the pod runner supports secret, configMap, projected, downwardAPI, emptyDir, hostPath)")
}

func (w *volumeWriter) secret(ctx context.Context, name string, items []corev1.KeyToPath, optional *bool, mode *int32) ([]file, error) {
	s, err := w.env.client.CoreV1().Secrets(w.env.pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, optionalOr(err, optional, "secret %q not found", name)
	}
	return keyFiles(s.Data, items, mode, optional, "Secret", name)
}

func (w *volumeWriter) configMap(ctx context.Context, name string, items []corev1.KeyToPath, optional *bool, mode *int32) ([]file, error) {
	cm, err := w.env.client.CoreV1().ConfigMaps(w.env.pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, optionalOr(err, optional, "configmap %q not found", name)
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return keyFiles(data, items, mode, optional, "ConfigMap", name)
}

// keyFiles maps keys to files: all keys by name, or only the listed items.
func keyFiles(data map[string][]byte, items []corev1.KeyToPath, mode *int32, optional *bool, kind, name string) ([]file, error) {
	var out []file
	if len(items) == 0 {
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			out = append(out, file{k, data[k], fileMode(mode, nil)})
		}
		return out, nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			if optional != nil && *optional {
				continue
			}
			return nil, configErrorf("couldn't find key %s in %s %s", it.Key, kind, name)
		}
		out = append(out, file{it.Path, v, fileMode(mode, it.Mode)})
	}
	return out, nil
}

func (w *volumeWriter) downward(items []corev1.DownwardAPIVolumeFile, mode *int32) ([]file, error) {
	var out []file
	for _, it := range items {
		var v string
		var err error
		switch {
		case it.FieldRef != nil:
			v, err = w.env.fieldFile(it.FieldRef.FieldPath)
		case it.ResourceFieldRef != nil:
			v = "0"
		}
		if err != nil {
			return nil, err
		}
		out = append(out, file{it.Path, []byte(v), fileMode(mode, it.Mode)})
	}
	return out, nil
}

// token asks the TokenRequest API for a token of the pod's ServiceAccount,
// bound to the pod (as the kubelet does): it stops working when the pod is
// deleted.
func (w *volumeWriter) token(ctx context.Context, src *corev1.ServiceAccountTokenProjection, mode *int32) ([]file, error) {
	pod := w.env.pod
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	req := &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{
		ExpirationSeconds: src.ExpirationSeconds,
		BoundObjectRef:    &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	tr, err := w.env.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("token for serviceaccount %s/%s: %w", pod.Namespace, sa, err)
	}
	return []file{{src.Path, []byte(tr.Status.Token), fileMode(mode, nil)}}, nil
}

// fieldFile is the downward-API value for volume files: labels and
// annotations as key="value" lines.
func (r *envResolver) fieldFile(path string) (string, error) {
	kv := func(m map[string]string) string {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var b strings.Builder
		for _, k := range keys {
			fmt.Fprintf(&b, "%s=%q\n", k, m[k])
		}
		return b.String()
	}
	switch path {
	case "metadata.labels":
		return kv(r.pod.Labels), nil
	case "metadata.annotations":
		return kv(r.pod.Annotations), nil
	}
	return r.field(path)
}

func fileMode(def, item *int32) os.FileMode {
	switch {
	case item != nil:
		return os.FileMode(*item)
	case def != nil:
		return os.FileMode(*def)
	}
	return 0o644
}
