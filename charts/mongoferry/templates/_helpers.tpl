{{/* Chart name, possibly overridden. */}}
{{- define "mongoferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name prefix of every resource: <release>-mongoferry, or the release name when it
already contains the chart name. */}}
{{- define "mongoferry.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mongoferry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "mongoferry.labels" -}}
helm.sh/chart: {{ include "mongoferry.chart" . }}
{{ include "mongoferry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mongoferry
{{- end }}

{{- define "mongoferry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mongoferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector of the operator pods. */}}
{{- define "mongoferry.operatorSelectorLabels" -}}
{{ include "mongoferry.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels the operator puts on worker pods (src/operator/podspec.rs). */}}
{{- define "mongoferry.workerSelectorLabels" -}}
app.kubernetes.io/managed-by: mongoferry-operator
app.kubernetes.io/component: migration-worker
{{- end }}

{{- define "mongoferry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mongoferry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* ServiceAccount of worker pods; empty means each namespace's default. */}}
{{- define "mongoferry.workerServiceAccountName" -}}
{{- if .Values.worker.serviceAccount.name }}
{{- .Values.worker.serviceAccount.name }}
{{- else if and .Values.worker.serviceAccount.create (not .Values.watchAllNamespaces) }}
{{- printf "%s-worker" (include "mongoferry.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Namespaces the operator watches (namespaced mode), as a JSON list. */}}
{{- define "mongoferry.watchNamespaces" -}}
{{- if .Values.watchNamespaces }}
{{- .Values.watchNamespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/* Namespaces whose worker pods get the worker NetworkPolicy, as a JSON list. */}}
{{- define "mongoferry.workerNamespaces" -}}
{{- if .Values.networkPolicy.workerNamespaces }}
{{- .Values.networkPolicy.workerNamespaces | uniq | toJson }}
{{- else if .Values.watchAllNamespaces }}
{{- list | toJson }}
{{- else }}
{{- include "mongoferry.watchNamespaces" . }}
{{- end }}
{{- end }}

{{- define "mongoferry.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "mongoferry.leaseName" -}}
{{- default (include "mongoferry.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* Rules of the operator in a watched namespace (or cluster-wide). Keep in step with
src/operator/check.rs, whose `mongoferry operator check` (helm test) verifies them. */}}
{{- define "mongoferry.operatorRules" -}}
- apiGroups: ["mongoferry.io"]
  resources: ["migrationjobs"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["mongoferry.io"]
  resources: ["migrationjobs/status"]
  verbs: ["patch"]
- apiGroups: ["mongoferry.io"]
  resources: ["migrationjobs/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
