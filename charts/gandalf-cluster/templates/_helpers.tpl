{{/* Name of the chart, overridable. */}}
{{- define "gandalf-cluster.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: release-chart, unless the release already carries the chart name. */}}
{{- define "gandalf-cluster.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "gandalf-cluster.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "gandalf-cluster.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "gandalf-cluster.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gandalf-cluster.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gandalf-cluster.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "gandalf-cluster.selectorLabels" . }}
app.kubernetes.io/version: {{ include "gandalf-cluster.tag" . | quote }}
app.kubernetes.io/component: cluster
app.kubernetes.io/part-of: platform
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "gandalf-cluster.tag" -}}
{{- .Values.image.tag | default .Values.global.imageTag | default .Chart.AppVersion }}
{{- end }}

{{- define "gandalf-cluster.image" -}}
{{- printf "%s/%s:%s" (.Values.global.imageRegistry | default .Values.image.registry) .Values.image.name (include "gandalf-cluster.tag" .) }}
{{- end }}

{{/* The config file, rendered into the chart's Secret when no existing one is named. */}}
{{- define "gandalf-cluster.config" -}}
listen: "0.0.0.0:{{ .Values.service.grpcPort }}"
admin_listen: "0.0.0.0:{{ .Values.service.opsPort }}"
{{- if not .Values.tenants }}
{{- fail "gandalf-cluster: set config.existingSecret, or tenants to render the configuration from" }}
{{- end }}
tenants:
  {{- toYaml .Values.tenants | nindent 2 }}
{{- with .Values.storageUrl }}
storage:
  url: {{ . | quote }}
{{- end }}
{{- range $key, $value := .Values.settings }}
{{ $key }}: {{ $value | int64 }}
{{- end }}
{{- end }}

{{- define "gandalf-cluster.configSecret" -}}
{{- .Values.config.existingSecret | default (include "gandalf-cluster.fullname" .) }}
{{- end }}
