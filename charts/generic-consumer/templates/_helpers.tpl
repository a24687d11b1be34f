{{/* Name of the chart, overridable. */}}
{{- define "generic-consumer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: release-chart, unless the release already carries the chart name. */}}
{{- define "generic-consumer.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else if contains (include "generic-consumer.name" .) .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "generic-consumer.name" .) | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "generic-consumer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "generic-consumer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "generic-consumer.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "generic-consumer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: consumer
app.kubernetes.io/part-of: platform
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The image of one consumer: (dict "root" $ "consumer" $c). */}}
{{- define "generic-consumer.image" -}}
{{- $root := .root }}
{{- $registry := $root.Values.global.imageRegistry | default $root.Values.image.registry }}
{{- $tag := .consumer.imageTag | default $root.Values.image.tag | default $root.Values.global.imageTag | default $root.Chart.AppVersion }}
{{- printf "%s/%s:%s" $registry $root.Values.image.name $tag }}
{{- end }}

{{- define "generic-consumer.gcpSecret" -}}
{{- .Values.global.gcp.credentialsSecret | default .Values.gcp.credentialsSecret }}
{{- end }}

{{- define "generic-consumer.gcpKey" -}}
{{- .Values.global.gcp.credentialsKey | default .Values.gcp.credentialsKey }}
{{- end }}

{{/* A .env value, double-quoted (the file's quoting: backslash and quote escaped). */}}
{{- define "generic-consumer.envValue" -}}
{{- printf "\"%s\"" (. | toString | replace "\\" "\\\\" | replace "\"" "\\\"") }}
{{- end }}

{{/* The shared .env: process-wide variables, Kafka environments, every domain's own. */}}
{{- define "generic-consumer.dotenv" -}}
# Rendered by the generic-consumer chart; the environment wins over this file.
WRITE_ENV={{ include "generic-consumer.envValue" .Values.writeEnv }}
SINK={{ include "generic-consumer.envValue" .Values.sink }}
BIGQUERY_API={{ include "generic-consumer.envValue" .Values.bigquery.api }}
SHUTDOWN_GRACE_SECS={{ .Values.shutdownGraceSecs }}
ADMIN_LISTEN="0.0.0.0:9090"
{{- range $env, $target := .Values.bigquery.targets }}
BQ_PROJECT_{{ upper $env }}={{ include "generic-consumer.envValue" $target.project }}
BQ_DATASET_{{ upper $env }}={{ include "generic-consumer.envValue" $target.dataset }}
{{- end }}
{{- range $env, $kafka := .Values.kafka.environments }}
KAFKA_BOOTSTRAP_{{ upper $env }}={{ include "generic-consumer.envValue" $kafka.bootstrap }}
{{- with $kafka.securityProtocol }}
KAFKA_SECURITY_PROTOCOL_{{ upper $env }}={{ include "generic-consumer.envValue" . }}
{{- end }}
{{- with $kafka.saslMechanism }}
KAFKA_SASL_MECHANISM_{{ upper $env }}={{ include "generic-consumer.envValue" . }}
{{- end }}
{{- with $kafka.saslUsername }}
KAFKA_SASL_USERNAME_{{ upper $env }}={{ include "generic-consumer.envValue" . }}
{{- end }}
{{- end }}
{{- range $name, $value := .Values.extraEnv }}
{{ $name }}={{ include "generic-consumer.envValue" $value }}
{{- end }}
{{- range .Values.consumers }}
{{- $d := upper .domain }}

# {{ $d }}
BQ_TABLE_{{ $d }}={{ include "generic-consumer.envValue" .table }}
IMPORT_PATH_{{ $d }}={{ include "generic-consumer.envValue" .importPath }}
IMPORT_OBJECT_{{ $d }}={{ include "generic-consumer.envValue" .importObject }}
CONSUME_ENV_{{ $d }}={{ include "generic-consumer.envValue" .consumeEnv }}
GROUP_ID_{{ $d }}={{ include "generic-consumer.envValue" .groupId }}
{{- with .ignoreEvents }}
IGNORE_EVENTS_{{ $d }}={{ include "generic-consumer.envValue" (toJson .) }}
{{- end }}
{{- with .topic }}
TOPIC_{{ $d }}={{ include "generic-consumer.envValue" . }}
{{- end }}
{{- with .rowMode }}
ROW_MODE_{{ $d }}={{ include "generic-consumer.envValue" . }}
{{- end }}
{{- with .dlqTopic }}
DLQ_TOPIC_{{ $d }}={{ include "generic-consumer.envValue" . }}
{{- end }}
{{- end }}
{{- end }}
