#!/usr/bin/with-contenv bashio
# shellcheck shell=bash
# Starts the Qwen3-TTS Wyoming server. The add-on's options (/data/options.json) become server arguments in
# wyoming_qwen3tts/addon.py; this script only adds what needs the Supervisor's API.

# The MQTT broker the Supervisor offers (the Mosquitto broker add-on), for announcements when the user set no
# broker of their own; addon.py reads these variables.
if bashio::config.true 'mqtt' && bashio::services.available 'mqtt'; then
    MQTT_HOST="$(bashio::services mqtt 'host')"
    MQTT_PORT="$(bashio::services mqtt 'port')"
    MQTT_USER="$(bashio::services mqtt 'username')"
    MQTT_PASSWORD="$(bashio::services mqtt 'password')"
    MQTT_SSL="$(bashio::services mqtt 'ssl')"
    export MQTT_HOST MQTT_PORT MQTT_USER MQTT_PASSWORD MQTT_SSL
fi

# Once the server answers (the first start downloads and converts the model first), tell Home Assistant
# about it: the Wyoming integration then offers it under Settings > Devices & services.
(
    until { : > /dev/tcp/127.0.0.1/10200; } 2> /dev/null; do
        sleep 2
    done
    config="$(bashio::var.json uri "tcp://$(hostname):10200")"
    if bashio::discovery 'wyoming' "${config}" > /dev/null; then
        bashio::log.info "Sent discovery information to Home Assistant."
    else
        bashio::log.error "Discovery message to Home Assistant failed!"
    fi
) &

exec python3 -m wyoming_qwen3tts --addon-options /data/options.json
