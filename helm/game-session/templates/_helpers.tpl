{{/*
Names, labels and small shared pieces of the game-session chart.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "game-session.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's resources: fullnameOverride, or
release-chart (just the release name when it already contains the chart's).
*/}}
{{- define "game-session.fullname" -}}
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

{{/* The namespace: namespaceOverride, or the release's. */}}
{{- define "game-session.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* chart-version, as the helm.sh/chart label. */}}
{{- define "game-session.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "game-session.labels" -}}
helm.sh/chart: {{ include "game-session.chart" . }}
{{ include "game-session.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: game-session
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that select the server's pods. */}}
{{- define "game-session.selectorLabels" -}}
app.kubernetes.io/name: {{ include "game-session.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{/*
An annotations block: commonAnnotations merged with a resource's own (passed
as "own"), starting on a new line indented by "indent"; nothing when both
are empty.
*/}}
{{- define "game-session.annotations" -}}
{{- $all := merge (deepCopy (.own | default dict)) (.context.Values.commonAnnotations | default dict) }}
{{- if $all }}
{{- printf "annotations:\n%s" (toYaml $all | indent 2) | nindent (int .indent) }}
{{- end }}
{{- end }}

{{/* The ServiceAccount's name. */}}
{{- define "game-session.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "game-session.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: registry/repository, then @digest or :tag. */}}
{{- define "game-session.image" -}}
{{- $repo := .Values.image.repository }}
{{- if .Values.image.registry }}
{{- $repo = printf "%s/%s" .Values.image.registry .Values.image.repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/* The fewest pods the release runs: autoscaling's minimum, or replicaCount. */}}
{{- define "game-session.minReplicas" -}}
{{- if .Values.autoscaling.enabled }}
{{- .Values.autoscaling.minReplicas }}
{{- else }}
{{- .Values.replicaCount }}
{{- end }}
{{- end }}

{{/* The OTel service.name: otel.serviceName, or the full name. */}}
{{- define "game-session.otelServiceName" -}}
{{- default (include "game-session.fullname" .) .Values.otel.serviceName }}
{{- end }}

{{/*
A native gRPC probe on the gRPC container port (a number: the kubelet's gRPC
probe takes no port names). `service` is the grpc.health.v1 service name;
empty checks the overall status. The kubelet speaks plain text without
credentials, so the port the probes use must stay plain text.
*/}}
{{- define "game-session.grpcProbe" -}}
grpc:
  port: {{ .context.Values.containerPorts.grpc }}
  {{- with .service }}
  service: {{ . }}
  {{- end }}
initialDelaySeconds: {{ .probe.initialDelaySeconds }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
successThreshold: {{ .probe.successThreshold }}
{{- end }}
