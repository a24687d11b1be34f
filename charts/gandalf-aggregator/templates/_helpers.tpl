{{/* Name of the chart, overridable. */}}
{{- define "gandalf-aggregator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: release-chart, unless the release already carries the chart name. */}}
{{- define "gandalf-aggregator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "gandalf-aggregator.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "gandalf-aggregator.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "gandalf-aggregator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gandalf-aggregator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gandalf-aggregator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "gandalf-aggregator.selectorLabels" . }}
app.kubernetes.io/version: {{ include "gandalf-aggregator.tag" . | quote }}
app.kubernetes.io/component: aggregator
app.kubernetes.io/part-of: platform
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "gandalf-aggregator.tag" -}}
{{- .Values.image.tag | default .Values.global.imageTag | default .Chart.AppVersion }}
{{- end }}

{{- define "gandalf-aggregator.image" -}}
{{- printf "%s/%s:%s" (.Values.global.imageRegistry | default .Values.image.registry) .Values.image.name (include "gandalf-aggregator.tag" .) }}
{{- end }}

{{/* The config file; the secret comes from the environment (GANDALF_AGGREGATOR__SECRET). */}}
{{- define "gandalf-aggregator.config" -}}
logical_name: {{ .Values.logicalName | quote }}
tenant: {{ .Values.tenant | quote }}
listen: "0.0.0.0:{{ .Values.service.grpcPort }}"
admin_listen: "0.0.0.0:{{ .Values.service.opsPort }}"
cluster:
{{- range .Values.cluster }}
  - {{ . | quote }}
{{- end }}
{{- range $key, $value := .Values.settings }}
{{ $key }}: {{ $value | int64 }}
{{- end }}
{{- end }}
