{{/*
inflight.labels: the labels of every object: the same as the kustomize tree's
(app.kubernetes.io/name when given, part-of) plus Helm's own (chart,
managed-by, instance), which test/helm ignores when it compares the two.
Call with (dict "ctx" $ "name" "inflight-extproc" "component" "extproc").
*/}}
{{- define "inflight.labels" -}}
{{- with .name }}
app.kubernetes.io/name: {{ . }}
{{- end }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
app.kubernetes.io/part-of: inflight
{{ include "inflight.helmLabels" .ctx }}
{{- end }}

{{/* inflight.helmLabels: the labels only the chart adds. */}}
{{- define "inflight.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
inflight.image: repository:tag@digest as kustomize writes it when both are
set, repository@digest or repository:tag. Call with an images.<component> value.
*/}}
{{- define "inflight.image" -}}
{{- if not (or .tag .digest) }}{{ fail "images.*: set tag or digest" }}{{ end -}}
{{ .repository }}{{ with .tag }}:{{ . }}{{ end }}{{ with .digest }}@{{ . }}{{ end }}
{{- end }}

{{/* inflight.podSecurityContext: non-root, seccomp RuntimeDefault. */}}
{{- define "inflight.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* inflight.containerSecurityContext: restricted PodSecurity and more. */}}
{{- define "inflight.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* inflight.fromPrometheus: the NetworkPolicy peer of Prometheus. Call with .Values.networkPolicy. */}}
{{- define "inflight.fromPrometheus" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .prometheus.namespace }}
  podSelector:
    matchLabels:
      {{- toYaml .prometheus.podLabels | nindent 6 }}
{{- end }}

{{/*
inflight.goMemLimit: GOMEMLIMIT, 90 % of the container's memory limit (Mi or
Gi), or the explicit goMemLimit value. Call with .Values.extproc or
.Values.controller and a "what" for the error.
*/}}
{{- define "inflight.goMemLimit" -}}
{{- if .v.goMemLimit -}}
{{ .v.goMemLimit }}
{{- else -}}
{{- $lim := toString (.v.resources.limits.memory | default "") -}}
{{- if regexMatch "^[0-9]+Mi$" $lim -}}
{{ div (mul (trimSuffix "Mi" $lim | int) 9) 10 }}MiB
{{- else if regexMatch "^[0-9]+Gi$" $lim -}}
{{ div (mul (trimSuffix "Gi" $lim | int) 9216) 10 }}MiB
{{- else -}}
{{ fail (printf "%s.resources.limits.memory=%q: want <n>Mi or <n>Gi to derive GOMEMLIMIT (90 %%), or set %s.goMemLimit" .what $lim .what) }}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
inflight.seconds: a duration of whole hours, minutes and seconds ("5m",
"1h2m3s", "15s"; values.schema.json allows only these) in seconds.
*/}}
{{- define "inflight.seconds" -}}
{{- $s := 0 -}}
{{- range regexFindAll "[0-9]+[hms]" . -1 -}}
{{- $n := trimSuffix "h" (trimSuffix "m" (trimSuffix "s" .)) | int -}}
{{- $s = add $s (mul $n (get (dict "h" 3600 "m" 60 "s" 1) (substr (sub (len .) 1 | int) (len .) .))) -}}
{{- end -}}
{{ $s }}
{{- end }}

{{/*
inflight.sidecarDrainSeconds: the extproc sidecar's terminationDrainDuration,
drainDelay + drainTimeout + 5 s (the extproc has released its cut streams
and exited by then). Fails unless terminationGracePeriodSeconds ≥ drainDelay
+ drainTimeout + 15 s, so that both exit before SIGKILL. Call with
.Values.extproc.
*/}}
{{- define "inflight.sidecarDrainSeconds" -}}
{{- $drain := add (include "inflight.seconds" .drainDelay | int) (include "inflight.seconds" .drainTimeout | int) -}}
{{- if lt (int .terminationGracePeriodSeconds) (add $drain 15 | int) -}}
{{- fail (printf "extproc.terminationGracePeriodSeconds=%d: want ≥ extproc.drainDelay (%s) + extproc.drainTimeout (%s) + 15 = %d, so the extproc and its sidecar exit before SIGKILL" (int .terminationGracePeriodSeconds) .drainDelay .drainTimeout (add $drain 15)) -}}
{{- end -}}
{{ add $drain 5 }}
{{- end }}

{{/* inflight.meshLabel: how the extproc pods ask for a sidecar. */}}
{{- define "inflight.meshLabel" -}}
{{- if .Values.mesh.revision -}}
istio.io/rev: {{ .Values.mesh.revision | quote }}
{{- else -}}
sidecar.istio.io/inject: "true"
{{- end -}}
{{- end }}
