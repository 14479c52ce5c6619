{{/* Chart name, overridable. */}}
{{- define "recloop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full resource name: release-chart, or the release name alone when it already contains the chart name. */}}
{{- define "recloop.fullname" -}}
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

{{- define "recloop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "recloop.labels" -}}
helm.sh/chart: {{ include "recloop.chart" . }}
{{ include "recloop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: recloop
{{- end }}

{{/* Labels selecting the serving pods (immutable once deployed: keep them minimal). */}}
{{- define "recloop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "recloop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: serve
{{- end }}

{{- define "recloop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "recloop.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "recloop.configMapName" -}}
{{- default (printf "%s-config" (include "recloop.fullname" .)) .Values.config.existingConfigMap }}
{{- end }}

{{- define "recloop.configPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.config.mountPath) .Values.config.fileName }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is pinned. */}}
{{- define "recloop.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}
