{{/* Name of the chart, overridable. */}}
{{- define "oc-sync-job.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: release-chart, unless the release already carries the chart name. */}}
{{- define "oc-sync-job.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else if contains (include "oc-sync-job.name" .) .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "oc-sync-job.name" .) | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "oc-sync-job.selectorLabels" -}}
app.kubernetes.io/name: {{ include "oc-sync-job.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "oc-sync-job.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "oc-sync-job.selectorLabels" . }}
app.kubernetes.io/version: {{ include "oc-sync-job.tag" . | quote }}
app.kubernetes.io/component: sync
app.kubernetes.io/part-of: platform
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "oc-sync-job.tag" -}}
{{- .Values.image.tag | default .Values.global.imageTag | default .Chart.AppVersion }}
{{- end }}

{{- define "oc-sync-job.image" -}}
{{- printf "%s/%s:%s" (.Values.global.imageRegistry | default .Values.image.registry) .Values.image.name (include "oc-sync-job.tag" .) }}
{{- end }}

{{- define "oc-sync-job.configSecret" -}}
{{- .Values.configSecret.existingSecret | default (include "oc-sync-job.fullname" .) }}
{{- end }}

{{/* config.json rendered from values (only without an existing Secret). */}}
{{- define "oc-sync-job.config" -}}
{{- if not .Values.config }}
{{- fail "oc-sync-job: set configSecret.existingSecret, or config to render config.json from" }}
{{- end }}
{{- toPrettyJson .Values.config }}
{{- end }}
