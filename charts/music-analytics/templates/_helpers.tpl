{{/* Names, labels and shared fragments. Every template gets its names and labels from here. */}}

{{- define "music-analytics.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/*
Resource-name prefix, at most 39 characters, so that the longest name built from it,
"<fullname>-recommendation-headless" (a Service: a DNS-1035 label, at most 63 characters), fits
for every release name Helm accepts (up to 53 characters, dots allowed). Dots become dashes and a
leading digit gets an "r" so the prefix starts a valid DNS-1035 label. Names that fit are kept
as they are; a longer one is cut to 30 characters plus "-" and the first 8 hex digits of its
sha256, so two long release names that share a prefix never share object names.
*/}}
{{- define "music-analytics.fullname" -}}
{{- $full := "" }}
{{- if .Values.fullnameOverride }}
{{- $full = .Values.fullnameOverride }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- $full = .Release.Name }}
{{- else }}
{{- $full = printf "%s-%s" .Release.Name $name }}
{{- end }}
{{- end }}
{{- $full = $full | replace "." "-" }}
{{- if regexMatch "^[0-9]" $full }}
{{- $full = printf "r%s" $full }}
{{- end }}
{{- include "music-analytics.fit" (dict "name" $full "max" 39) }}
{{- end }}

{{/*
(dict "name" N "max" M): N unchanged if it has at most M characters, otherwise its first
M-9 characters (no trailing "-") + "-" + the first 8 hex digits of sha256(N).
*/}}
{{- define "music-analytics.fit" -}}
{{- if le (len .name) (int .max) }}
{{- .name }}
{{- else }}
{{- printf "%s-%s" (.name | trunc (int (sub .max 9)) | trimSuffix "-") (sha256sum .name | trunc 8) }}
{{- end }}
{{- end }}

{{- define "music-analytics.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable for the life of a release (never include the version here). */}}
{{- define "music-analytics.selectorLabels" -}}
app.kubernetes.io/name: {{ include "music-analytics.name" .root | quote }}
app.kubernetes.io/instance: {{ .root.Release.Name | quote }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Full labels; call with (dict "root" $ "component" "mapreduce"). */}}
{{- define "music-analytics.labels" -}}
helm.sh/chart: {{ include "music-analytics.chart" .root }}
{{ include "music-analytics.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: {{ include "music-analytics.name" .root }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{- define "music-analytics.image" -}}
{{- $img := .Values.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{- define "music-analytics.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A service's settings: the shared `default:` block deep-merged with services.<name>.
Call with (dict "root" $ "name" "mapreduce"); returns YAML, read it back with fromYaml.
*/}}
{{- define "music-analytics.serviceConfig" -}}
{{- $own := index .root.Values.services .name }}
{{- mergeOverwrite (deepCopy .root.Values.default) (deepCopy $own) | toYaml }}
{{- end }}

{{- define "music-analytics.serviceName" -}}
{{- printf "%s-%s" (include "music-analytics.fullname" .root) .name }}
{{- end }}

{{- define "music-analytics.headlessName" -}}
{{- printf "%s-%s-headless" (include "music-analytics.fullname" .root) .name }}
{{- end }}

{{- define "music-analytics.resultsConfigMap" -}}
{{- printf "%s-results" (include "music-analytics.fullname" .) }}
{{- end }}

{{- define "music-analytics.jobName" -}}
{{- include "music-analytics.fit" (dict "name" (printf "%s-run-%d" (include "music-analytics.fullname" .) (int .Release.Revision)) "max" 63) }}
{{- end }}

{{/*
Pod and container security settings meeting the "restricted" Pod Security Standard. The image
runs as UID/GID 10001 and writes only to emptyDir mounts, so the root filesystem is read-only.
*/}}
{{- define "music-analytics.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "music-analytics.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Environment from a name: value map, sorted so renders are stable. */}}
{{- define "music-analytics.envMap" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end }}

{{/*
TLS. The Secret (kubernetes.io/tls: tls.crt, tls.key, ca.crt) is mounted read-only here in the
services, the pipeline Job and the helm test pods.
*/}}
{{- define "music-analytics.tlsDir" -}}
/etc/music-analytics/tls
{{- end }}

{{/* The Secret's name: tls.secretName, or the one the chart's Certificate writes. */}}
{{- define "music-analytics.tlsSecretName" -}}
{{- if .Values.tls.secretName }}
{{- .Values.tls.secretName }}
{{- else }}
{{- printf "%s-tls" (include "music-analytics.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The TLS volume for a pod; call with (dict "root" $ "keys" (list "ca.crt" ...)). Only the keys a
pod uses are projected: the pipeline Job without client auth never sees the private key. A key
missing from the Secret keeps the pod in ContainerCreating with an event naming it.
*/}}
{{- define "music-analytics.tlsVolume" -}}
- name: tls
  secret:
    secretName: {{ include "music-analytics.tlsSecretName" .root }}
    # Owner and group read: the pods run as 10001 with fsGroup 10001.
    defaultMode: 0440
    items:
      {{- range .keys }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
{{- end }}

{{- define "music-analytics.tlsMount" -}}
- name: tls
  mountPath: {{ include "music-analytics.tlsDir" . }}
  readOnly: true
{{- end }}

{{/* The Secret keys a client pod (the Job, a helm test pod) needs, as a JSON list. */}}
{{- define "music-analytics.clientTlsKeys" -}}
{{- if .Values.tls.clientAuth }}
{{- list "ca.crt" "tls.crt" "tls.key" | toJson }}
{{- else }}
{{- list "ca.crt" | toJson }}
{{- end }}
{{- end }}
