{{/* Name of the chart, overridable. */}}
{{- define "provisioner-job.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: release-chart, unless the release already carries the chart name. */}}
{{- define "provisioner-job.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else if contains (include "provisioner-job.name" .) .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "provisioner-job.name" .) | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "provisioner-job.selectorLabels" -}}
app.kubernetes.io/name: {{ include "provisioner-job.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "provisioner-job.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "provisioner-job.selectorLabels" . }}
app.kubernetes.io/version: {{ include "provisioner-job.tag" . | quote }}
app.kubernetes.io/component: provisioner
app.kubernetes.io/part-of: platform
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The job's config file: the shape of the aggregation service's own configuration. */}}
{{- define "provisioner-job.config" -}}
database:
  lock_wait_secs: {{ .Values.database.lockWaitSecs }}
  batch_size: {{ .Values.database.batchSize }}
  connect_timeout_secs: {{ .Values.database.connectTimeoutSecs }}
  statement_timeout_secs: {{ .Values.database.statementTimeoutSecs }}
  lock_timeout_secs: {{ .Values.database.lockTimeoutSecs }}
provisionClientsConfig:
  enabled: {{ .Values.provisioning.enabled }}
  clusterId: {{ .Values.provisioning.clusterId | quote }}
  clients:
{{- if .Values.clients }}
{{- range $name, $client := .Values.clients }}
    {{ $name }}:
      aggregatorIdentifier: {{ $client.aggregatorIdentifier | quote }}
{{- with $client.clusterId }}
      clusterId: {{ . | quote }}
{{- end }}
{{- end }}
{{- else }} {}
{{- end }}
{{- end }}

{{/* The job's ServiceAccount. */}}
{{- define "provisioner-job.serviceAccountName" -}}
{{- default (include "provisioner-job.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{/* Whether keys are delivered into a Secret through the API server. */}}
{{- define "provisioner-job.secretDelivery" -}}
{{- if eq .Values.apiKeys.delivery "secret" }}true{{ end }}
{{- end }}

{{- define "provisioner-job.tag" -}}
{{- .Values.image.tag | default .Values.global.imageTag | default .Chart.AppVersion }}
{{- end }}

{{- define "provisioner-job.image" -}}
{{- printf "%s/%s:%s" (.Values.global.imageRegistry | default .Values.image.registry) .Values.image.name (include "provisioner-job.tag" .) }}
{{- end }}
