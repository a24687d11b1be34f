{{/* Name of the chart, overridable. */}}
{{- define "devops-api.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: release-chart, unless the release already carries the chart name. */}}
{{- define "devops-api.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "devops-api.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "devops-api.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "devops-api.selectorLabels" -}}
app.kubernetes.io/name: {{ include "devops-api.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "devops-api.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "devops-api.selectorLabels" . }}
app.kubernetes.io/version: {{ include "devops-api.tag" . | quote }}
app.kubernetes.io/component: api
app.kubernetes.io/part-of: platform
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "devops-api.tag" -}}
{{- .Values.image.tag | default .Values.global.imageTag | default .Chart.AppVersion }}
{{- end }}

{{- define "devops-api.image" -}}
{{- printf "%s/%s:%s" (.Values.global.imageRegistry | default .Values.image.registry) .Values.image.name (include "devops-api.tag" .) }}
{{- end }}

{{/* The config file; the database URL comes from the environment (DEVOPS_API__DATABASE__URL). */}}
{{- define "devops-api.config" -}}
listen: "0.0.0.0:{{ .Values.service.httpPort }}"
admin_listen: "0.0.0.0:{{ .Values.service.opsPort }}"
database:
  max_connections: {{ .Values.database.maxConnections | int64 }}
  max_databases: {{ .Values.database.maxDatabases | int64 }}
  acquire_timeout_secs: {{ .Values.database.acquireTimeoutSecs | int64 }}
  lock_timeout_ms: {{ .Values.database.lockTimeoutMs | int64 }}
  statement_timeout_ms: {{ .Values.database.statementTimeoutMs | int64 }}
auth:
  tokens_file: /run/secrets/devops-api/{{ .Values.auth.tokensKey }}
  identity_header: {{ .Values.auth.identityHeader | quote }}
  trusted_proxies: {{ .Values.auth.trustedProxies | default list | toJson }}
  identity_scopes: {{ .Values.auth.identityScopes | default dict | toJson }}
tenants:
  allowed_extensions: {{ .Values.tenants.allowedExtensions | toJson }}
  max_logins: {{ .Values.tenants.maxLogins | int64 }}
  max_changes_per_caller: {{ .Values.tenants.maxChangesPerCaller | int64 }}
http:
  header_read_timeout_secs: {{ .Values.http.headerReadTimeoutSecs | int64 }}
  max_connections: {{ .Values.http.maxConnections | int64 }}
  request_timeout_secs: {{ .Values.http.requestTimeoutSecs | int64 }}
max_body_bytes: {{ .Values.maxBodyBytes | int64 }}
shutdown_grace_secs: {{ .Values.shutdownGraceSecs | int64 }}
{{- end }}
