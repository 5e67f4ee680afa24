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

{{/*
The full name with a suffix ("backend", "metrics", ...), cut so the whole
stays within the 63 characters of a Service or Pod name:
include "game-session.suffixedName" (list . "metrics").
*/}}
{{- define "game-session.suffixedName" -}}
{{- $ctx := index . 0 }}
{{- $suffix := index . 1 }}
{{- $fullname := include "game-session.fullname" $ctx | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $fullname $suffix }}
{{- end }}

{{/* The namespace: namespaceOverride, or the release's. */}}
{{- define "game-session.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* chart-version, as the helm.sh/chart label. */}}
{{- define "game-session.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The labels of a resource, as one map rendered once (so no key appears
twice): the chart's, then commonLabels, then the resource's own ("extra"),
then the selector labels of its component, which nothing overrides:
include "game-session.labelsFor" (dict "context" . "component" "metrics" "extra" .Values.x)
*/}}
{{- define "game-session.labelsFor" -}}
{{- $ctx := .context }}
{{- $labels := dict
  "helm.sh/chart" (include "game-session.chart" $ctx)
  "app.kubernetes.io/version" (include "game-session.versionLabel" $ctx)
  "app.kubernetes.io/managed-by" $ctx.Release.Service
  "app.kubernetes.io/part-of" "game-session" }}
{{- $labels = mergeOverwrite $labels ($ctx.Values.commonLabels | default dict) (.extra | default dict) }}
{{- $labels = mergeOverwrite $labels (include "game-session.selectorMap" (list $ctx .component) | fromYaml) }}
{{- toYaml $labels }}
{{- end }}

{{/* Labels of the server's resources. */}}
{{- define "game-session.labels" -}}
{{ include "game-session.labelsFor" (dict "context" . "component" "server") }}
{{- end }}

{{/*
Labels of the server's pod template: no chart version, so that a chart
upgrade that changes nothing in the pod does not restart every pod (and end
its sessions).
*/}}
{{- define "game-session.podLabels" -}}
{{- $labels := dict "app.kubernetes.io/version" (include "game-session.versionLabel" .) }}
{{- $labels = mergeOverwrite $labels (.Values.commonLabels | default dict) (.Values.podLabels | default dict) }}
{{- $labels = mergeOverwrite $labels (include "game-session.selectorLabels" . | fromYaml) }}
{{- toYaml $labels }}
{{- end }}

{{/*
The app.kubernetes.io/version label: the image tag (or the appVersion), cut
to the 63 characters of a label value, ending alphanumeric.
*/}}
{{- define "game-session.versionLabel" -}}
{{- regexReplaceAll "^[-_.]+|[-_.]+$" (.Values.image.tag | default .Chart.AppVersion | toString | trunc 63) "" }}
{{- end }}

{{/*
The labels that select a component's resources, as a map; its values are
strings whatever the release is called (a release named 1e3 or true):
include "game-session.selectorMap" (list . "server") | fromYaml
*/}}
{{- define "game-session.selectorMap" -}}
{{- toYaml (dict
  "app.kubernetes.io/name" (include "game-session.name" (index . 0))
  "app.kubernetes.io/instance" (index . 0).Release.Name
  "app.kubernetes.io/component" (index . 1)) }}
{{- end }}

{{/* Labels that select the server's pods. */}}
{{- define "game-session.selectorLabels" -}}
{{ include "game-session.selectorMap" (list . "server") }}
{{- end }}

{{/* Labels that select the metrics Service (for the ServiceMonitor). */}}
{{- define "game-session.metricsSelectorLabels" -}}
{{ include "game-session.selectorMap" (list . "metrics") }}
{{- end }}

{{/*
The label key that lets a pod through a NetworkPolicy with allowExternal
false: <fullname>-client, within the 63 characters of a label name.
*/}}
{{- define "game-session.clientLabel" -}}
{{- printf "%s-client" (include "game-session.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{/*
A value as a string for an env var. Helm reads whole numbers in values files
as floats, which print as 1e+06; whole floats print as integers here.
*/}}
{{- define "game-session.envValue" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) }}
{{- int64 . | toString }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/*
Settings the schema cannot relate to each other, checked once (from the
Deployment) so a bad combination fails at `helm install`, not at start-up.
*/}}
{{- define "game-session.validate" -}}
{{- $ports := .Values.containerPorts }}
{{- if eq (int $ports.grpc) (int $ports.metrics) }}
{{- fail "containerPorts.grpc and containerPorts.metrics must differ" }}
{{- end }}
{{- if and .Values.backend.enabled (or (eq (int $ports.backend) (int $ports.grpc)) (eq (int $ports.backend) (int $ports.metrics))) }}
{{- fail "containerPorts.backend must differ from containerPorts.grpc and containerPorts.metrics" }}
{{- end }}
{{- if or (eq (int $ports.health) (int $ports.grpc)) (eq (int $ports.health) (int $ports.metrics)) (and .Values.backend.enabled (eq (int $ports.health) (int $ports.backend))) }}
{{- fail "containerPorts.health must differ from containerPorts.grpc, containerPorts.metrics and containerPorts.backend" }}
{{- end }}
{{- $auth := .Values.auth }}
{{- if $auth.enabled }}
{{- if and $auth.secretKeys.hs256Secret (eq $auth.secretKeys.hs256Secret $auth.secretKeys.adminApiKeys) }}
{{- fail "auth.secretKeys: hs256Secret and adminApiKeys must differ" }}
{{- end }}
{{- if not (or $auth.secretKeys.hs256Secret $auth.publicKeys.existingSecret $auth.jwks.url $auth.jwks.file.existingSecret $auth.jwks.file.existingConfigMap) }}
{{- fail "auth.enabled needs a key source: auth.secretKeys.hs256Secret, auth.publicKeys or auth.jwks" }}
{{- end }}
{{- if ne (empty $auth.publicKeys.existingSecret) (empty $auth.publicKeys.keys) }}
{{- fail "auth.publicKeys: give existingSecret and the keys in it together" }}
{{- end }}
{{- if and $auth.jwks.file.existingSecret $auth.jwks.file.existingConfigMap }}
{{- fail "auth.jwks.file: give existingSecret or existingConfigMap, not both" }}
{{- end }}
{{- if and $auth.jwks.url (or $auth.jwks.file.existingSecret $auth.jwks.file.existingConfigMap) }}
{{- fail "auth.jwks: give url or file, not both" }}
{{- end }}
{{- if and $auth.jwks.caSecret.name (not $auth.jwks.url) }}
{{- fail "auth.jwks.caSecret needs auth.jwks.url" }}
{{- end }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "tls.enabled needs tls.existingSecret, a kubernetes.io/tls Secret with tls.crt and tls.key" }}
{{- end }}
{{- if .Values.tls.clientCA.existingSecret }}
{{- if not .Values.tls.enabled }}
{{- fail "tls.clientCA needs tls.enabled" }}
{{- end }}
{{- if not .Values.backend.enabled }}
{{- fail "tls.clientCA verifies backend clients: it needs backend.enabled" }}
{{- end }}
{{- end }}
{{- /* The server reads the collector's TLS files only for an https:// endpoint. */}}
{{- with .Values.otel.tls }}
{{- if and (or .caSecret.name .clientSecret.name) (not (hasPrefix "https://" $.Values.otel.endpoint)) }}
{{- fail "otel.tls.caSecret and otel.tls.clientSecret need an https:// otel.endpoint" }}
{{- end }}
{{- end }}
{{- if gt (int .Values.config.defaultMaxPlayers) (int .Values.config.maxPlayersLimit) }}
{{- fail "config.defaultMaxPlayers must not exceed config.maxPlayersLimit" }}
{{- end }}
{{- with .Values.updateStrategy.rollingUpdate }}
{{- if and (eq $.Values.updateStrategy.type "RollingUpdate") (has (toString .maxSurge) (list "0" "0%")) (has (toString .maxUnavailable) (list "0" "0%")) }}
{{- fail "updateStrategy.rollingUpdate: maxSurge and maxUnavailable cannot both be 0" }}
{{- end }}
{{- end }}
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

{{/*
An address for the server to listen on: listenHost and a port, the host in
brackets when it is IPv6: include "game-session.listen" (list . port).
*/}}
{{- define "game-session.listen" -}}
{{- $host := (index . 0).Values.listenHost }}
{{- if contains ":" $host }}
{{- $host = printf "[%s]" (trimAll "[]" $host) }}
{{- end }}
{{- printf "%s:%d" $host (int (index . 1)) }}
{{- end }}

{{/* The fewest pods the release runs: autoscaling's minimum, or replicaCount. */}}
{{- define "game-session.minReplicas" -}}
{{- if .Values.autoscaling.enabled }}
{{- .Values.autoscaling.minReplicas }}
{{- else }}
{{- .Values.replicaCount }}
{{- end }}
{{- end }}

{{/*
"true" when the PodDisruptionBudget can use pdb.minAvailable: it is set, and
the fewest pods the release runs exceed it (a percentage rounds up, as the
disruption controller rounds it).
*/}}
{{- define "game-session.pdbUsesMinAvailable" -}}
{{- $min := .Values.pdb.minAvailable }}
{{- $replicas := include "game-session.minReplicas" . | int }}
{{- if kindIs "invalid" $min }}
{{- "false" }}
{{- else if kindIs "string" $min }}
{{- $needed := div (add (mul (trimSuffix "%" $min | int) $replicas) 99) 100 }}
{{- lt (int $needed) $replicas }}
{{- else }}
{{- lt (int $min) $replicas }}
{{- end }}
{{- end }}

{{/* The OTel service.name: otel.serviceName, or the full name. */}}
{{- define "game-session.otelServiceName" -}}
{{- default (include "game-session.fullname" .) .Values.otel.serviceName }}
{{- end }}

{{/*
A native gRPC probe on the health container port (a number: the kubelet's
gRPC probe takes no port names). `service` is the grpc.health.v1 service
name; empty checks the overall status. The kubelet speaks plain text without
credentials, which the health port always does, whatever tls.* and auth.*
say.
*/}}
{{- define "game-session.grpcProbe" -}}
grpc:
  port: {{ .context.Values.containerPorts.health }}
  {{- with .service }}
  service: {{ . }}
  {{- end }}
initialDelaySeconds: {{ .probe.initialDelaySeconds }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
successThreshold: {{ .probe.successThreshold }}
{{- end }}

{{/* The name of the Secret with the HS256 secret and the admin API keys. */}}
{{- define "game-session.authSecretName" -}}
{{- .Values.auth.existingSecret | default (include "game-session.suffixedName" (list . "auth")) }}
{{- end }}

{{/* The name of the Secret with the key that signs resume tokens. */}}
{{- define "game-session.resumeSecretName" -}}
{{- .Values.resume.existingSecret | default (include "game-session.suffixedName" (list . "resume")) }}
{{- end }}

{{/*
The files the server reads from Secrets and ConfigMaps, as one map of the
container's env vars, volumes and volume mounts, so the three always agree:
include "game-session.files" . | fromYaml. Each Secret is mounted read-only
as a directory (never with subPath), so that Kubernetes updates its files in
place: the TLS files and a JWKS file are read again without a restart (the
others, the collector's CA and client certificate among them, at the next
start). The
items pin the keys: a missing key keeps the pod from starting, with an event
naming it.
*/}}
{{- define "game-session.files" -}}
{{- $env := list }}
{{- $volumes := list }}
{{- $mounts := list }}
{{- /* The resume key, whatever auth says: every replica signs with it. */}}
{{- with .Values.resume }}
{{- $items := list (dict "key" .secretKey "path" "resume-key") }}
{{- $volumes = append $volumes (dict "name" "resume" "secret" (dict "secretName" (include "game-session.resumeSecretName" $) "items" $items)) }}
{{- $mounts = append $mounts (dict "name" "resume" "mountPath" "/etc/game-session/resume" "readOnly" true) }}
{{- $env = append $env (dict "name" "GAME_SESSION_RESUME_KEY_FILE" "value" "/etc/game-session/resume/resume-key") }}
{{- end }}
{{- $auth := .Values.auth }}
{{- if $auth.enabled }}
{{- $keys := $auth.secretKeys }}
{{- if or $keys.hs256Secret $keys.adminApiKeys }}
{{- $dir := "/etc/game-session/auth" }}
{{- $items := list }}
{{- with $keys.hs256Secret }}
{{- $items = append $items (dict "key" . "path" "jwt-hs256-secret") }}
{{- $env = append $env (dict "name" "GAME_SESSION_JWT_HS256_SECRET_FILE" "value" (printf "%s/jwt-hs256-secret" $dir)) }}
{{- end }}
{{- with $keys.adminApiKeys }}
{{- $items = append $items (dict "key" . "path" "admin-api-keys") }}
{{- $env = append $env (dict "name" "GAME_SESSION_ADMIN_API_KEY_FILE" "value" (printf "%s/admin-api-keys" $dir)) }}
{{- end }}
{{- $volumes = append $volumes (dict "name" "auth" "secret" (dict "secretName" (include "game-session.authSecretName" .) "items" $items)) }}
{{- $mounts = append $mounts (dict "name" "auth" "mountPath" $dir "readOnly" true) }}
{{- end }}
{{- with $auth.publicKeys.existingSecret }}
{{- $dir := "/etc/game-session/jwt-public-keys" }}
{{- $items := list }}
{{- $files := list }}
{{- range $auth.publicKeys.keys }}
{{- $items = append $items (dict "key" . "path" .) }}
{{- $files = append $files (printf "%s/%s" $dir .) }}
{{- end }}
{{- $env = append $env (dict "name" "GAME_SESSION_JWT_PUBLIC_KEY_FILES" "value" (join "," $files)) }}
{{- $volumes = append $volumes (dict "name" "jwt-public-keys" "secret" (dict "secretName" . "items" $items)) }}
{{- $mounts = append $mounts (dict "name" "jwt-public-keys" "mountPath" $dir "readOnly" true) }}
{{- end }}
{{- $jwks := $auth.jwks.file }}
{{- if or $jwks.existingSecret $jwks.existingConfigMap }}
{{- $items := list (dict "key" $jwks.key "path" "jwks.json") }}
{{- $source := dict "secret" (dict "secretName" $jwks.existingSecret "items" $items) }}
{{- if $jwks.existingConfigMap }}
{{- $source = dict "configMap" (dict "name" $jwks.existingConfigMap "items" $items) }}
{{- end }}
{{- $volumes = append $volumes (merge (dict "name" "jwks") $source) }}
{{- $mounts = append $mounts (dict "name" "jwks" "mountPath" "/etc/game-session/jwks" "readOnly" true) }}
{{- $env = append $env (dict "name" "GAME_SESSION_JWKS_FILE" "value" "/etc/game-session/jwks/jwks.json") }}
{{- end }}
{{- with $auth.jwks.caSecret.name }}
{{- $volumes = append $volumes (dict "name" "jwks-ca" "secret" (dict "secretName" . "items" (list (dict "key" $auth.jwks.caSecret.key "path" "ca.crt")))) }}
{{- $mounts = append $mounts (dict "name" "jwks-ca" "mountPath" "/etc/game-session/jwks-ca" "readOnly" true) }}
{{- $env = append $env (dict "name" "GAME_SESSION_JWKS_CA_FILE" "value" "/etc/game-session/jwks-ca/ca.crt") }}
{{- end }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- $items := list (dict "key" "tls.crt" "path" "tls.crt") (dict "key" "tls.key" "path" "tls.key") }}
{{- $volumes = append $volumes (dict "name" "tls" "secret" (dict "secretName" .Values.tls.existingSecret "items" $items)) }}
{{- $mounts = append $mounts (dict "name" "tls" "mountPath" "/etc/game-session/tls" "readOnly" true) }}
{{- $env = append $env (dict "name" "GAME_SESSION_TLS_CERT_FILE" "value" "/etc/game-session/tls/tls.crt") }}
{{- $env = append $env (dict "name" "GAME_SESSION_TLS_KEY_FILE" "value" "/etc/game-session/tls/tls.key") }}
{{- with .Values.tls.clientCA.existingSecret }}
{{- $volumes = append $volumes (dict "name" "tls-client-ca" "secret" (dict "secretName" . "items" (list (dict "key" "ca.crt" "path" "ca.crt")))) }}
{{- $mounts = append $mounts (dict "name" "tls-client-ca" "mountPath" "/etc/game-session/tls-client-ca" "readOnly" true) }}
{{- $env = append $env (dict "name" "GAME_SESSION_TLS_CLIENT_CA_FILE" "value" "/etc/game-session/tls-client-ca/ca.crt") }}
{{- end }}
{{- end }}
{{- if hasPrefix "https://" .Values.otel.endpoint }}
{{- with .Values.otel.tls.caSecret }}
{{- if .name }}
{{- $volumes = append $volumes (dict "name" "otel-ca" "secret" (dict "secretName" .name "items" (list (dict "key" .key "path" "ca.crt")))) }}
{{- $mounts = append $mounts (dict "name" "otel-ca" "mountPath" "/etc/game-session/otel-ca" "readOnly" true) }}
{{- $env = append $env (dict "name" "OTEL_EXPORTER_OTLP_CERTIFICATE" "value" "/etc/game-session/otel-ca/ca.crt") }}
{{- end }}
{{- end }}
{{- with .Values.otel.tls.clientSecret.name }}
{{- $items := list (dict "key" "tls.crt" "path" "tls.crt") (dict "key" "tls.key" "path" "tls.key") }}
{{- $volumes = append $volumes (dict "name" "otel-client" "secret" (dict "secretName" . "items" $items)) }}
{{- $mounts = append $mounts (dict "name" "otel-client" "mountPath" "/etc/game-session/otel-client" "readOnly" true) }}
{{- $env = append $env (dict "name" "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE" "value" "/etc/game-session/otel-client/tls.crt") }}
{{- $env = append $env (dict "name" "OTEL_EXPORTER_OTLP_CLIENT_KEY" "value" "/etc/game-session/otel-client/tls.key") }}
{{- end }}
{{- end }}
{{- toYaml (dict "env" $env "volumes" $volumes "mounts" $mounts) }}
{{- end }}
