{{/*
Names and labels. Same results as the original chart, so a release keeps its object names
when it switches to this chart.
*/}}

{{/* The chart's short name: nameOverride or the chart name, at most 63 characters. */}}
{{- define "email.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of every object: fullnameOverride; else the release name when it already contains
the chart's name; else "<release>-<name>". At most 63 characters, no trailing dash.
*/}}
{{- define "email.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := .Values.nameOverride | default .Chart.Name }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "email.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "email.selectorLabels" -}}
app.kubernetes.io/name: {{ include "email.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "email.labels" -}}
helm.sh/chart: {{ include "email.chart" . }}
{{ include "email.selectorLabels" . }}
{{- with .Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Where the plugin's files are mounted in the pod. */}}
{{- define "email.pluginDir" -}}/var/lib/teleport/plugins/email{{- end }}
{{- define "email.identityDir" -}}{{ include "email.pluginDir" . }}/teleport-identity{{- end }}
{{- /* The mail credential's Secret, mounted whole as a directory so that rotations reach it. */}}
{{- define "email.secretDir" -}}{{ include "email.pluginDir" . }}/mail-secret{{- end }}
{{- define "email.mailgunKeyPath" -}}{{ include "email.secretDir" . }}/{{ .Values.mailgun.privateKeySecretPath }}{{- end }}
{{- define "email.smtpPasswordPath" -}}{{ include "email.secretDir" . }}/{{ .Values.smtp.passwordSecretPath }}{{- end }}

{{- /* The directory of log.output when it is a file (it gets a writable emptyDir); else empty. */}}
{{- define "email.logDir" -}}
{{- $output := .Values.log.output | default "" | lower }}
{{- if and (hasPrefix "/" $output) (not (has $output (list "stdout" "stderr"))) }}
{{- dir .Values.log.output }}
{{- end }}
{{- end }}

{{/* Which mailer the config names: Mailgun wins when both are enabled, as in the original. */}}
{{- define "email.mailer" -}}
{{- if .Values.mailgun.enabled }}mailgun{{ else if .Values.smtp.enabled }}smtp{{ end }}
{{- end }}

{{/* The Secret holding the mail credential: the operator's own, or the one this chart makes. */}}
{{- define "email.passwordSecretName" -}}
{{- $mailer := include "email.mailer" . }}
{{- if and (eq $mailer "mailgun") .Values.mailgun.privateKeyFromSecret }}
{{- .Values.mailgun.privateKeyFromSecret }}
{{- else if and (eq $mailer "smtp") .Values.smtp.passwordFromSecret }}
{{- .Values.smtp.passwordFromSecret }}
{{- else }}
{{- include "email.fullname" . }}-secret
{{- end }}
{{- end }}
